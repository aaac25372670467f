-- Per-key usage kept beside the call log (SPEC §2), so stats and the key's usage fields stay
-- exact and fast when old log rows are pruned. The call-log writer adds each batch's rows to
-- both in the transaction that inserts them; rows without a key are not rolled up.
--
-- usage_daily: one row per key, UTC day (`YYYY-MM-DD` of the row's timestamp) and model (''
-- for rows without one). response_time_ms_sum / calls is the mean response time.
CREATE TABLE usage_daily (
    api_key_id           INTEGER NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    day                  TEXT    NOT NULL,
    model                TEXT    NOT NULL DEFAULT '',
    calls                INTEGER NOT NULL DEFAULT 0,
    success_calls        INTEGER NOT NULL DEFAULT 0,
    error_calls          INTEGER NOT NULL DEFAULT 0,
    prompt_tokens        INTEGER NOT NULL DEFAULT 0,
    completion_tokens    INTEGER NOT NULL DEFAULT 0,
    cached_tokens        INTEGER NOT NULL DEFAULT 0,
    total_tokens         INTEGER NOT NULL DEFAULT 0,
    cost                 REAL    NOT NULL DEFAULT 0,
    response_time_ms_sum INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (api_key_id, day, model)
) WITHOUT ROWID;

-- Day-range sums over all keys (e.g. spend per day across the gateway).
CREATE INDEX idx_usage_daily_day ON usage_daily (day);

-- Lifetime sums over the key's rows (total_tokens; cost in USD).
ALTER TABLE api_keys ADD COLUMN total_tokens_used INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN total_cost        REAL    NOT NULL DEFAULT 0;

INSERT INTO usage_daily (api_key_id, day, model, calls, success_calls, error_calls,
    prompt_tokens, completion_tokens, cached_tokens, total_tokens, cost, response_time_ms_sum)
SELECT api_key_id, date(timestamp / 1000, 'unixepoch'), COALESCE(model, ''), COUNT(*),
    SUM(status = 'success'), SUM(status = 'error'), COALESCE(SUM(prompt_tokens), 0),
    COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(cached_tokens), 0),
    COALESCE(SUM(total_tokens), 0), COALESCE(SUM(cost), 0), SUM(response_time)
FROM api_call_logs
WHERE api_key_id IS NOT NULL
GROUP BY 1, 2, 3;

UPDATE api_keys SET
    total_tokens_used = (SELECT COALESCE(SUM(total_tokens), 0) FROM usage_daily WHERE api_key_id = api_keys.id),
    total_cost        = (SELECT COALESCE(SUM(cost), 0) FROM usage_daily WHERE api_key_id = api_keys.id);
