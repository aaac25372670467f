#!/usr/bin/env python3
"""Writes a keygate export (format 2) with KEYS keys and N call-log rows to stdout.

Usage: gen_history.py N [KEYS] [DAYS]

Rows are spread evenly over the DAYS days before now (ids in time order), over the keys in
turn (each key has 1/KEYS of the traffic), four models, 3% errors, 20% streamed. Key i's
secret is `kg-scale-key-<i>` (its hash is in the file), so a server started on the imported
database authenticates it. Deterministic for a given N, KEYS, DAYS and start minute.
"""
import hashlib
import json
import sys
import time

n = int(sys.argv[1])
keys = int(sys.argv[2]) if len(sys.argv) > 2 else 10
days = int(sys.argv[3]) if len(sys.argv) > 3 else 120
now_ms = int(time.time() // 60 * 60 * 1000)
start_ms = now_ms - days * 86_400_000
step = (days * 86_400_000) / max(n, 1)


def rfc(ms):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + ".%03dZ" % (ms % 1000)


out = sys.stdout
meta = {
    "format_version": 2,
    "keygate_version": "scale-bench",
    "exported_at": rfc(now_ms),
    "counts": {"apikeys": keys, "logs": n},
    "sanitized": False,
    "types": ["apikeys", "logs"],
}
out.write('{\n  "metadata": %s,\n  "data": {\n    "apikeys": [' % json.dumps(meta))
for i in range(1, keys + 1):
    secret = "kg-scale-key-%d" % i
    row = {
        "id": i, "key_hash": hashlib.sha256(secret.encode()).hexdigest(), "encrypted_key": None,
        "key_preview": "kg-s…%04d" % i, "name": "scale key %d" % i, "description": None,
        "created_at": rfc(start_ms - 1000), "updated_at": rfc(start_ms - 1000),
        "expires_at": None, "expiration_mode": "fixed", "activation_period": None,
        "activation_unit": None, "activated_at": rfc(start_ms - 1000), "is_active": True,
        "revoked_at": None, "usage_count": 0, "last_used_at": None,
        "total_tokens_used": 0, "total_cost": 0.0, "allowed_models": [], "allowed_clients": [],
        "allowed_ips": [], "allowed_endpoints": [], "tags": [],
    }
    out.write("%s\n      %s" % ("," if i > 1 else "", json.dumps(row)))
out.write('\n    ],\n    "logs": [')

models = ["gpt-4o-mini", "gpt-4o", "gpt-4.1-nano", "text-embedding-3-small"]
ok_tail = (', "status": "success", "http_status": 200, "response_time": %d, "ip_address": "10.0.%d.%d", '
           '"endpoint": "/v1/chat/completions", "error_message": null, "request_size": %d, '
           '"response_size": %d, "prompt_tokens": %d, "completion_tokens": %d, "total_tokens": %d, '
           '"stream": %s, "cost": %s, "cached_tokens": null}')
err_tail = (', "status": "error", "http_status": 502, "response_time": %d, "ip_address": "10.0.%d.%d", '
            '"endpoint": "/v1/chat/completions", "error_message": "upstream unavailable", '
            '"request_size": %d, "response_size": 0, "prompt_tokens": null, '
            '"completion_tokens": null, "total_tokens": null, "stream": false, "cost": 0.0, '
            '"cached_tokens": null}')
write = out.write
sec_text_cache = (None, None)
buf = []
for i in range(1, n + 1):
    ms = start_ms + int(i * step)
    sec = ms // 1000
    if sec_text_cache[0] != sec:
        sec_text_cache = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    ts = "%s.%03dZ" % (sec_text_cache[1], ms % 1000)
    key = i % keys + 1
    head = '%s\n      {"id": %d, "api_key_id": %d, "timestamp": "%s", "model": "%s"' % (
        "," if i > 1 else "", i, key, ts, models[i % 4])
    rt = 200 + i % 900
    if i % 33 == 0:
        buf.append(head + err_tail % (rt, i % 256, i % 199, 300 + i % 700))
    else:
        p, c = 20 + i % 300, 5 + i % 200
        buf.append(head + ok_tail % (rt, i % 256, i % 199, 300 + i % 700, 400 + c * 4, p, c, p + c,
                                     "true" if i % 5 == 0 else "false",
                                     repr((p * 15 + c * 60) / 1e8)))
    if len(buf) >= 4096:
        write("".join(buf))
        buf.clear()
write("".join(buf))
out.write("\n    ]\n  }\n}\n")
