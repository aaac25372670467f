-- wrk script for keygate's bench: POST /v1/chat/completions with a small JSON body.
-- Environment:
--   BENCH_STREAM=1   add "stream":true (SSE response)
--   BENCH_AUTH=KEY   send "Authorization: Bearer KEY"
--   BENCH_CONNS=N    echoed into the result line (wrk's -c), for bookkeeping
--   BENCH_API=anthropic  POST /v1/messages with an Anthropic Messages body instead
-- done() prints one machine-readable line: BENCH_JSON {...}; latencies in microseconds.

local stream = os.getenv("BENCH_STREAM") == "1"
local auth = os.getenv("BENCH_AUTH")
local conns = tonumber(os.getenv("BENCH_CONNS") or "0") or 0

local anthropic = os.getenv("BENCH_API") == "anthropic"

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if auth ~= nil and auth ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. auth
end
if anthropic then
  wrk.path = "/v1/messages"
  wrk.headers["anthropic-version"] = "2023-06-01"
  wrk.body = '{"model":"bench-claude","max_tokens":16,"messages":[{"role":"user","content":"Say hello in five words."}]'
    .. (stream and ',"stream":true' or '') .. '}'
else
  wrk.path = "/v1/chat/completions"
  wrk.body = '{"model":"bench","messages":[{"role":"user","content":"Say hello in five words."}],'
    .. '"max_tokens":16' .. (stream and ',"stream":true' or '') .. '}'
end

function done(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"connections":%d,"duration_s":%.3f,"bytes":%d,"rps":%.1f,'
      .. '"p50_us":%.0f,"p90_us":%.0f,"p99_us":%.0f,"max_us":%.0f,"mean_us":%.1f,'
      .. '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d}\n',
    summary.requests, conns, secs, summary.bytes, summary.requests / secs,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
