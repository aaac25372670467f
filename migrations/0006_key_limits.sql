-- Per-key limits (SPEC §10); 0 = no limit. rate_limit_window is in minutes; the *_cost*
-- limits are USD; token_limit counts total_tokens over the key's life.
ALTER TABLE api_keys ADD COLUMN rate_limit_window   INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN rate_limit_requests INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN rate_limit_tokens   INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN rate_limit_cost     REAL    NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN concurrency_limit   INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN token_limit         INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN daily_cost_limit    REAL    NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN weekly_cost_limit   REAL    NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN total_cost_limit    REAL    NOT NULL DEFAULT 0;

-- The rate window under way of each metered key, as its in-memory meter last had it: written
-- by the call-log writer in the transaction of the rows it counts, read when the meter starts
-- (after a restart) so that no restart gives a key a fresh allowance. A window that has ended
-- is simply stale (its start tells); daily, weekly and lifetime sums come from usage_daily
-- and api_keys instead.
CREATE TABLE rate_windows (
    api_key_id   INTEGER PRIMARY KEY REFERENCES api_keys (id) ON DELETE CASCADE,
    window_start INTEGER NOT NULL,
    requests     INTEGER NOT NULL,
    tokens       INTEGER NOT NULL,
    cost         REAL    NOT NULL
);
