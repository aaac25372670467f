#!/usr/bin/env python3
"""The CPU time of the benchmark's server threads, from /proc, for run.sh's CPU-per-request table.

  cputicks.py snap LABEL=PID ...       prints {"LABEL": [user_ticks, system_ticks],
                                       "LABEL/THREAD": [...], ...}: each process's total
                                       (threads that ended included) and its live threads
                                       (those of one name summed); a process that is gone is
                                       left out
  cputicks.py add RESULT BEFORE AFTER  adds to a wrk result (RESULT, with its "requests") the
                                       CPU each thread spent per request between the two
                                       snapshots: "cpu_us": {"LABEL": [user, system],
                                       "LABEL/THREAD": [user, system]}

The kernel keeps each thread's total exactly and splits it into user and system time by
sampling at its clock tick, so the split is approximate; both are in µs per request here.
"""
import json
import os
import sys


def stat(path):
    """(name, user ticks, system ticks) from a /proc stat file."""
    with open(path) as f:
        text = f.read()
    # "pid (name) state ppid ...": the name may hold spaces and parentheses
    name = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    return name, int(fields[11]), int(fields[12])  # utime, stime: fields 14 and 15


def threads(pid):
    """{thread name: [user ticks, system ticks]} of a process's live threads, those of one
    name summed."""
    out = {}
    base = "/proc/%s/task" % pid
    for tid in os.listdir(base):
        try:
            name, user, system = stat("%s/%s/stat" % (base, tid))
        except OSError:  # the thread ended meanwhile
            continue
        ticks = out.setdefault(name, [0, 0])
        ticks[0] += user
        ticks[1] += system
    return out


def snap(pairs):
    out = {}
    for pair in pairs:
        label, pid = pair.split("=", 1)
        try:
            _, user, system = stat("/proc/%s/stat" % pid)
            out[label] = [user, system]
            for name, ticks in threads(pid).items():
                out["%s/%s" % (label, name)] = ticks
        except OSError:
            continue
    json.dump(out, sys.stdout)


def add(result_path, before_path, after_path):
    with open(result_path) as f:
        result = json.load(f)
    with open(before_path) as f:
        before = json.load(f)
    with open(after_path) as f:
        after = json.load(f)
    requests = result.get("requests") or 0
    if requests <= 0:
        return
    us_per_tick = 1e6 / os.sysconf("SC_CLK_TCK")
    cpu = {}
    for name, (user, system) in after.items():
        user0, system0 = before.get(name, [0, 0])
        cpu[name] = [
            round((user - user0) * us_per_tick / requests, 3),
            round((system - system0) * us_per_tick / requests, 3),
        ]
    result["cpu_us"] = cpu
    with open(result_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "snap":
        snap(sys.argv[2:])
    elif len(sys.argv) == 5 and sys.argv[1] == "add":
        add(*sys.argv[2:])
    else:
        sys.exit(__doc__)
