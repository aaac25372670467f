"""Drives `keygate keys` (the interactive menu) through a pseudo-terminal.

Usage: menu_pty.py KEYGATE_BINARY. Environment (DATABASE_URL, …) is passed through.
Walks: view all keys → change the first listed key's expiry to "Never expires" → quit.
Prints the screen text it saw; exits non-zero if an expected prompt never appears.
"""
import os
import pty
import re
import select
import sys
import time

binary = sys.argv[1]
pid, fd = pty.fork()
if pid == 0:
    os.execv(binary, [binary, "keys"])

seen = ""
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def wait_for(text, timeout=15.0):
    global seen
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in ANSI.sub("", seen):
            return
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 65536).decode("utf-8", "replace")
            except OSError:
                break
    print(ANSI.sub("", seen))
    sys.exit(f"never saw {text!r}")


def send(keys):
    os.write(fd, keys.encode())
    time.sleep(0.2)


DOWN, ENTER = "\x1b[B", "\r"
wait_for("View all API keys")
send(ENTER)                      # view all
wait_for("menu-key-b")
send(DOWN + ENTER)               # change a key's expiry
wait_for("Which key?")
send(ENTER)                      # the first listed key (newest)
wait_for("New expiry")
send(DOWN * 3 + ENTER)           # default "30 days" → "Never expires"
wait_for("now never expires")
send("q")                        # leave the menu
_, status = os.waitpid(pid, 0)
print(ANSI.sub("", seen))
sys.exit(os.waitstatus_to_exitcode(status))
