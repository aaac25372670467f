#!/usr/bin/env python3
"""Sequential (concurrency 1) streaming time-to-first-byte probe over one keep-alive socket.

Sends COUNT POST /v1/chat/completions requests with "stream":true, one after another, and
times each with time.perf_counter():
  TTFB  = request sent -> first response body byte received (after the headers)
  total = request sent -> terminating chunk (or Content-Length) fully received
Parses HTTP/1.1 chunked encoding minimally, checks status 200 and that the SSE stream ends
with "data: [DONE]". Prints one JSON object (microseconds) on stdout.
"""
import argparse
import json
import math
import socket
import sys
import time

perf = time.perf_counter


class ProbeError(Exception):
    pass


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    # nearest-rank percentile
    k = max(0, min(len(sorted_vals) - 1, math.ceil(p / 100.0 * len(sorted_vals)) - 1))
    return sorted_vals[k]


class Conn:
    def __init__(self, host, port, timeout):
        self.addr = (host, port)
        self.timeout = timeout
        self.sock = None

    def open(self):
        self.close()
        s = socket.create_connection(self.addr, timeout=self.timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = s

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def request(self, raw):
        """Send one request, return (status, ttfb_s, total_s, body_bytes, close)."""
        if self.sock is None:
            self.open()
        buf = bytearray()
        state = {"hdr_end": None, "t_first": None}

        def recv_more():
            d = self.sock.recv(65536)
            t = perf()
            if not d:
                raise ProbeError("connection closed by server mid-response")
            buf.extend(d)
            he = state["hdr_end"]
            if he is not None and state["t_first"] is None and len(buf) > he:
                state["t_first"] = t
            return t

        t0 = perf()
        self.sock.sendall(raw)
        while True:
            t = recv_more()
            i = buf.find(b"\r\n\r\n")
            if i >= 0:
                state["hdr_end"] = i + 4
                if len(buf) > i + 4:
                    state["t_first"] = t
                break
        head = bytes(buf[: i]).decode("latin-1").split("\r\n")
        try:
            status = int(head[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            raise ProbeError("bad status line: %r" % head[0])
        headers = {}
        for line in head[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        close = headers.get("connection", "").lower() == "close"
        pos = state["hdr_end"]
        body = bytearray()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                j = buf.find(b"\r\n", pos)
                while j < 0:
                    recv_more()
                    j = buf.find(b"\r\n", pos)
                size = int(bytes(buf[pos:j]).split(b";")[0].strip() or b"0", 16)
                pos = j + 2
                if size == 0:
                    # optional trailers, then an empty line
                    while True:
                        j = buf.find(b"\r\n", pos)
                        while j < 0:
                            recv_more()
                            j = buf.find(b"\r\n", pos)
                        line_empty = j == pos
                        pos = j + 2
                        if line_empty:
                            break
                    break
                while len(buf) < pos + size + 2:
                    recv_more()
                body.extend(buf[pos : pos + size])
                pos += size + 2
        elif "content-length" in headers:
            n = int(headers["content-length"])
            while len(buf) < pos + n:
                recv_more()
            body.extend(buf[pos : pos + n])
            pos += n
        else:
            # read to EOF
            try:
                while True:
                    recv_more()
            except ProbeError:
                pass
            body.extend(buf[pos:])
            close = True
        t_end = perf()
        t_first = state["t_first"] if state["t_first"] is not None else t_end
        if close:
            self.close()
        return status, t_first - t0, t_end - t0, bytes(body), close


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/v1/chat/completions")
    ap.add_argument("--auth", default="", help="bearer token (optional)")
    ap.add_argument("--count", type=int, default=500, help="measured requests")
    ap.add_argument("--warmup", type=int, default=20, help="unmeasured requests first")
    ap.add_argument("--extra-json", default="", help='extra body fields, e.g. \'"mock_chunk_delay_ms":2\'')
    ap.add_argument("--timeout", type=float, default=10.0)
    a = ap.parse_args()

    body = '{"model":"bench","messages":[{"role":"user","content":"Say hello in five words."}],' \
           '"max_tokens":16,"stream":true' + ("," + a.extra_json if a.extra_json else "") + "}"
    body_b = body.encode()
    hdrs = [
        "POST %s HTTP/1.1" % a.path,
        "Host: %s:%d" % (a.host, a.port),
        "User-Agent: keygate-bench-ttfb/1",
        "Accept: text/event-stream",
        "Content-Type: application/json",
        "Content-Length: %d" % len(body_b),
    ]
    if a.auth:
        hdrs.append("Authorization: Bearer %s" % a.auth)
    raw = ("\r\n".join(hdrs) + "\r\n\r\n").encode() + body_b

    conn = Conn(a.host, a.port, a.timeout)
    ttfbs, totals, events = [], [], []
    sent = 0
    errors = 0
    first_error = None
    reconnects = 0
    t_start = None
    for n in range(a.warmup + a.count):
        if n == a.warmup:
            t_start = perf()
        try:
            if conn.sock is None and n > 0:
                reconnects += 1
            sent += 1
            status, ttfb, total, resp, _ = conn.request(raw)
            if status != 200:
                raise ProbeError("HTTP %d: %r" % (status, resp[:200]))
            if b"data: [DONE]" not in resp:
                raise ProbeError("stream did not end with data: [DONE]")
        except (OSError, ProbeError, ValueError) as e:
            errors += 1
            if first_error is None:
                first_error = "%s: %s" % (type(e).__name__, e)
            conn.close()
            if errors >= 5:
                break
            continue
        if n >= a.warmup:
            ttfbs.append(ttfb)
            totals.append(total)
            events.append(resp.count(b"data: "))
    elapsed = perf() - (t_start if t_start is not None else perf())
    conn.close()
    ttfbs.sort()
    totals.sort()
    us = lambda v: None if v is None else round(v * 1e6, 1)
    out = {
        "sent": sent,
        "ok": len(ttfbs),
        "errors": errors,
        "first_error": first_error,
        "reconnects": reconnects,
        "ttfb_p50_us": us(pct(ttfbs, 50)),
        "ttfb_p99_us": us(pct(ttfbs, 99)),
        "total_p50_us": us(pct(totals, 50)),
        "total_p99_us": us(pct(totals, 99)),
        "rps": round(len(ttfbs) / elapsed, 1) if elapsed > 0 else None,
        "events_per_response": (sum(events) / len(events)) if events else None,
    }
    print(json.dumps(out))
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
