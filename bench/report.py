#!/usr/bin/env python3
"""Turn the raw results of bench/run.sh (one JSON file per target+load) into a markdown report.

Usage: report.py RESULTS_DIR OUT_MD [--meta META_JSON]
Files in RESULTS_DIR are named TARGET__LOAD.json, LOAD one of chat_c64, chat_c1, stream_c64
(wrk BENCH_JSON lines), ttfb_c1, paced_c1 (bench/ttfb.py output).
"""
import json
import os
import sys

TARGETS = ["direct", "nginx", "floor", "keygate", "keygate_policy", "keygate_routed", "nginx_messages", "keygate_messages"]
LOADS = [
    ("chat_c64", "chat, c={conns}"),
    ("chat_c1", "chat, c=1"),
    ("stream_c64", "stream, c={conns}"),
    ("ttfb_c1", "stream TTFB, c=1"),
    ("paced_c1", "stream paced TTFB, c=1"),
    ("messages_stream_c64", "/v1/messages stream, c={conns}"),
]


def load(d, target, name):
    p = os.path.join(d, "%s__%s.json" % (target, name))
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)


def fmt_us(v):
    if v is None:
        return "–"
    if v < 1000:
        return "%.0f µs" % v
    if v < 100000:
        return "%.2f ms" % (v / 1000.0)
    return "%.0f ms" % (v / 1000.0)


def fmt_delta(v):
    if v is None:
        return "–"
    sign = "+" if v >= 0 else "−"
    return sign + fmt_us(abs(v))


def fmt_rps(v):
    return "–" if v is None else "{:,.0f}".format(v)


def ratio(a, b):
    if a is None or b is None or not b:
        return "–"
    return "%.2f×" % (a / b)


def get(r, k):
    return None if r is None else r.get(k)


def main():
    args = sys.argv[1:]
    meta = {}
    if "--meta" in args:
        i = args.index("--meta")
        with open(args[i + 1]) as f:
            meta = json.load(f)
        del args[i : i + 2]
    d, out_md = args[0], args[1]
    targets = [t for t in TARGETS if any(load(d, t, l) for l, _ in LOADS)]
    conns = meta.get("connections", 64)

    lines = []
    w = lines.append
    w("# keygate benchmark")
    w("")
    if meta.get("env"):
        w(meta["env"])
        w("")
    w("| target | load | RPS | p50 | p99 | notes |")
    w("|---|---|---:|---:|---:|---|")
    R = {}
    for t in targets:
        for key, label in LOADS:
            r = load(d, t, key)
            R[(t, key)] = r
            if r is None:
                continue
            label = label.format(conns=conns)
            notes = []
            if key.startswith(("ttfb", "paced")):
                p50, p99 = r.get("ttfb_p50_us"), r.get("ttfb_p99_us")
                notes.append("TTFB; total p50 %s, p99 %s; %d req" % (
                    fmt_us(r.get("total_p50_us")), fmt_us(r.get("total_p99_us")), r.get("ok", 0)))
                if r.get("errors"):
                    notes.append("**%d errors** (%s)" % (r["errors"], r.get("first_error")))
                ev = r.get("events_per_response")
                if ev is not None:
                    notes.append("%.0f SSE events/resp" % ev)
            else:
                p50, p99 = r.get("p50_us"), r.get("p99_us")
                notes.append("%d req in %.1f s" % (r["requests"], r["duration_s"]))
                errs = {k[4:]: v for k, v in r.items() if k.startswith("err_") and v}
                if errs:
                    notes.append("**errors: %s**" % ", ".join("%s=%d" % kv for kv in errs.items()))
            w("| %s | %s | %s | %s | %s | %s |" % (
                t, label, fmt_rps(r.get("rps")), fmt_us(p50), fmt_us(p99), "; ".join(notes)))
    w("")

    paired = load(d, "paired", "chat_c1")  # examples/paired_c1.rs, all targets in one file

    def v(t, key, field):
        return get(R.get((t, key)), field)

    if "keygate" in targets:
        w("## keygate vs. the others")
        w("")
        w("| metric | keygate | nginx | note |")
        w("|---|---:|---:|---|")
        w("| throughput chat c=%d, vs nginx | %s | 1.00× | keygate RPS / nginx RPS |" % (
            conns, ratio(v("keygate", "chat_c64", "rps"), v("nginx", "chat_c64", "rps"))))
        w("| throughput stream c=%d, vs nginx | %s | 1.00× | |" % (
            conns, ratio(v("keygate", "stream_c64", "rps"), v("nginx", "stream_c64", "rps"))))
        if "keygate_policy" in targets:
            w("| throughput chat c=%d with a restricted key, vs nginx | %s | 1.00× | key with allowed models, IPs, endpoints and tags |" % (
                conns, ratio(v("keygate_policy", "chat_c64", "rps"), v("nginx", "chat_c64", "rps"))))
        if "keygate_routed" in targets:
            w("| throughput chat c=%d with 20 upstreams configured, vs nginx | %s | 1.00× | routed by model among 20 (3 serve the model, weighted); %s of the one-upstream run |" % (
                conns, ratio(v("keygate_routed", "chat_c64", "rps"), v("nginx", "chat_c64", "rps")),
                ratio(v("keygate_routed", "chat_c64", "rps"), v("keygate", "chat_c64", "rps"))))
        if "keygate_messages" in targets:
            w("| throughput /v1/messages stream c=%d, vs nginx | %s | 1.00× | Anthropic event stream, usage scanned from its events |" % (
                conns, ratio(v("keygate_messages", "messages_stream_c64", "rps"), v("nginx_messages", "messages_stream_c64", "rps"))))
        w("| throughput chat c=%d, vs direct | %s | %s | share of the bare mock's RPS |" % (
            conns, ratio(v("keygate", "chat_c64", "rps"), v("direct", "chat_c64", "rps")),
            ratio(v("nginx", "chat_c64", "rps"), v("direct", "chat_c64", "rps"))))

        def added(t, key, field):
            a, b = v(t, key, field), v("direct", key, field)
            return None if a is None or b is None else a - b

        w("| added latency chat c=1, p50 | %s | %s | target − direct |" % (
            fmt_delta(added("keygate", "chat_c1", "p50_us")), fmt_delta(added("nginx", "chat_c1", "p50_us"))))
        w("| added latency chat c=1, p99 | %s | %s | target − direct |" % (
            fmt_delta(added("keygate", "chat_c1", "p99_us")), fmt_delta(added("nginx", "chat_c1", "p99_us"))))
        if "keygate_policy" in targets:
            w("| added latency chat c=1, p99, restricted key | %s | | target − direct |" % (
                fmt_delta(added("keygate_policy", "chat_c1", "p99_us"))))
        if paired:
            for q, label in (("p50_us", "p50"), ("p99_us", "p99")):
                w("| added latency chat c=1, %s, requests interleaved | %s | %s | restricted key %s; see below |" % (
                    label, fmt_delta(paired_added(paired, "keygate", q)), fmt_delta(paired_added(paired, "nginx", q)),
                    fmt_delta(paired_added(paired, "keygate_policy", q))))
        w("| added stream TTFB c=1, p50 | %s | %s | target − direct |" % (
            fmt_delta(added("keygate", "ttfb_c1", "ttfb_p50_us")), fmt_delta(added("nginx", "ttfb_c1", "ttfb_p50_us"))))
        w("| added stream TTFB c=1, p99 | %s | %s | target − direct |" % (
            fmt_delta(added("keygate", "ttfb_c1", "ttfb_p99_us")), fmt_delta(added("nginx", "ttfb_c1", "ttfb_p99_us"))))

        def paced(t):
            a, b = v(t, "paced_c1", "ttfb_p50_us"), v(t, "paced_c1", "total_p50_us")
            if a is None or b is None:
                return "–"
            return "%s (%s of total)" % ("streamed" if a < 0.25 * b else "**BUFFERED?**", "%.0f%%" % (100.0 * a / b))

        w("| paced stream: TTFB p50 vs total p50 | %s | %s | chunks %s ms apart; buffering would push TTFB to ≈ total |" % (
            paced("keygate"), paced("nginx"), meta.get("paced_delay_ms", "?")))
        rss = meta.get("rss") or {}
        if rss:
            w("| keygate RSS | %s | | VmRSS idle %s → after load %s; VmHWM (peak) %s |" % (
                "%.1f MiB" % (rss.get("hwm_kb", 0) / 1024.0),
                "%.1f MiB" % (rss.get("idle_rss_kb", 0) / 1024.0),
                "%.1f MiB" % (rss.get("rss_kb", 0) / 1024.0),
                "%.1f MiB" % (rss.get("hwm_kb", 0) / 1024.0)))
        lc = meta.get("logcheck")
        if lc:
            w("")
            w("**Call-log check: %s** — %d rows in api_call_logs (via %s); %d requests sent to /v1 "
              "(completed), so expected %d ≤ rows ≤ %d (+%d for requests in flight when wrk stopped)." % (
                  lc["result"], lc["rows"], lc["source"], lc["requests"], lc["requests"],
                  lc["requests"] + lc["slack"], lc["slack"]))
        w("")
    if "keygate" in targets and "nginx" in targets:
        cpu_section(w, R, conns)
    rounds = int(meta.get("rounds", 0) or 0)
    if rounds and "keygate" in targets:
        rounds_section(w, d, rounds, conns, meta.get("round_duration", "?"))
    if paired:
        paired_section(w, paired, meta)
    w("Latencies: wrk's exact percentiles (lua `done()`); stream c=%d times the whole SSE response; "
      "TTFB = request sent → first body byte (bench/ttfb.py, %s sequential requests over keep-alive)." % (
          conns, meta.get("ttfb_count", "?")))
    text = "\n".join(lines) + "\n"
    with open(out_md, "w") as f:
        f.write(text)
    sys.stdout.write(text)


def paired_added(paired, t, q):
    a, b = (paired.get(t) or {}).get(q), (paired.get("direct") or {}).get(q)
    return None if a is None or b is None else a - b


def paired_section(w, paired, meta):
    """c=1 with the targets taking turns request by request (examples/paired_c1.rs): each one's
    percentiles and what it adds over direct, all measured over the same seconds."""
    w("## c=1, requests interleaved")
    w("")
    w("One client (examples/paired_c1.rs) takes turns between the targets, %s requests in a row "
      "each, %s turns, over one keep-alive connection each: a hiccup of the host falls on all of "
      "them alike, so their added latencies compare within the run." % (
          meta.get("paired_block", "?"), meta.get("paired_cycles", "?")))
    w("")
    w("| target | requests | p50 | p99 | p99.9 | added p50 | added p99 | added p99.9 |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    for t in ("direct", "nginx", "floor", "keygate", "keygate_policy"):
        r = paired.get(t)
        if not r:
            continue
        w("| %s | %d | %s | %s | %s | %s | %s | %s |" % (
            t, r["requests"], fmt_us(r["p50_us"]), fmt_us(r["p99_us"]), fmt_us(r["p999_us"]),
            *(fmt_delta(paired_added(paired, t, q)) if t != "direct" else "" for q in ("p50_us", "p99_us", "p999_us"))))
    w("")


def median(values):
    values = sorted(x for x in values if x is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2.0


def cpu_section(w, R, conns):
    """Where the CPU went in the chat c=64 loads: each server thread's user and system time per
    request (bench/cputicks.py), and what keygate may spend at 0.80× of nginx's throughput."""
    runs = [(t, R.get((t, "chat_c64"))) for t in ("nginx", "floor", "keygate", "keygate_policy")]
    runs = [(t, r) for t, r in runs if r and r.get("cpu_us")]
    if not runs:
        return
    w("## CPU per request, chat c=%d" % conns)
    w("")
    w("User and system time of each server thread (from `/proc`, in µs per request) in the "
      "chat c=%d loads above. Mock and proxy share one core, which the load keeps busy, so "
      "the throughput is about 1 s over their sum." % conns)
    w("")
    w("| target | thread | user | system | total |")
    w("|---|---|---:|---:|---:|")
    totals = {}
    for t, r in runs:
        cpu = r["cpu_us"]
        for name, (user, system) in sorted(cpu.items(), key=lambda kv: -sum(kv[1])):
            if "/" in name and user + system >= 0.05:
                w("| %s | %s | %.2f | %.2f | %.2f |" % (t, name, user, system, user + system))
        # the processes' totals: they keep the time of threads that ended during the load
        proxy = sum(sum(v) for k, v in cpu.items() if k != "mock" and "/" not in k)
        mock = sum(cpu.get("mock", [0, 0]))
        w("| %s | **proxy, all threads** | | | **%.2f** |" % (t, proxy))
        totals[t] = (proxy, mock)
    w("")
    if "nginx" in totals:
        nginx_proxy, nginx_mock = totals["nginx"]
        for t in ("floor", "keygate", "keygate_policy"):
            if t not in totals:
                continue
            proxy, mock = totals[t]
            budget = (nginx_proxy + nginx_mock) / 0.80 - mock
            beyond = ""
            if t != "floor" and "floor" in totals:
                floor_proxy, floor_mock = totals["floor"]
                beyond = " Beyond the floor (keygate's own work, and what it costs the mock): " \
                    "%.2f + %.2f µs." % (proxy - floor_proxy, mock - floor_mock)
            w("- %s: %.2f µs per request with the mock's %.2f (nginx: %.2f + %.2f), which predicts "
              "%.2f× nginx's throughput; at 0.80× it could spend %.2f µs.%s" % (
                  t, proxy, mock, nginx_proxy, nginx_mock,
                  (nginx_proxy + nginx_mock) / (proxy + mock), budget, beyond))
        w("")


def rounds_section(w, d, rounds, conns, duration):
    """The interleaved rounds: per round, the targets' chat c=64 RPS and p99 and chat c=1 p99,
    keygate's ratios to nginx and its added c=1 p99 over direct; then the medians."""
    kg = [t for t in ("keygate", "keygate_policy") if load(d, t, "round1_chat_c64")]
    w("## Interleaved rounds")
    w("")
    w("%d rounds; in each, direct, nginx, keygate and keygate with the restricted key take turns "
      "(chat c=%d, then chat c=1, %s each), so a round's ratios compare runs seconds apart." % (
          rounds, conns, duration))
    w("")
    head = "| round | nginx c=%d RPS | nginx p99 | nginx c=1 added p99 |" % conns
    for t in kg:
        head += " %s RPS | ratio | p99 | p99 ratio | c=1 added p99 |" % t
    w(head)
    w("|---" * (4 + 5 * len(kg)) + "|")
    cols = {}
    for r in range(1, rounds + 1):
        n = load(d, "nginx", "round%d_chat_c64" % r)
        direct1 = load(d, "direct", "round%d_chat_c1" % r)
        n1 = load(d, "nginx", "round%d_chat_c1" % r)
        n_added = None if get(n1, "p99_us") is None or get(direct1, "p99_us") is None else get(n1, "p99_us") - get(direct1, "p99_us")
        cols.setdefault("nginx", []).append(n_added)
        row = "| %d | %s | %s | %s |" % (r, fmt_rps(get(n, "rps")), fmt_us(get(n, "p99_us")), fmt_delta(n_added))
        for t in kg:
            k = load(d, t, "round%d_chat_c64" % r)
            k1 = load(d, t, "round%d_chat_c1" % r)
            rps_ratio = None if not get(n, "rps") or get(k, "rps") is None else get(k, "rps") / get(n, "rps")
            p99_ratio = None if not get(n, "p99_us") or get(k, "p99_us") is None else get(k, "p99_us") / get(n, "p99_us")
            added = None if get(k1, "p99_us") is None or get(direct1, "p99_us") is None else get(k1, "p99_us") - get(direct1, "p99_us")
            cols.setdefault(t, []).append((rps_ratio, p99_ratio, added))
            row += " %s | %s | %s | %s | %s |" % (
                fmt_rps(get(k, "rps")), "–" if rps_ratio is None else "%.2f×" % rps_ratio,
                fmt_us(get(k, "p99_us")), "–" if p99_ratio is None else "%.2f×" % p99_ratio,
                fmt_delta(added))
        w(row)
    row = "| **median** | | | %s |" % fmt_delta(median(cols["nginx"]))
    for t in kg:
        rr = median(c[0] for c in cols[t])
        pr = median(c[1] for c in cols[t])
        ad = median(c[2] for c in cols[t])
        row += " | **%s** | | **%s** | **%s** |" % (
            "–" if rr is None else "%.2f×" % rr, "–" if pr is None else "%.2f×" % pr, fmt_delta(ad))
    w(row)
    w("")


if __name__ == "__main__":
    main()
