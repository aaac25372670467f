-- Call-log rows are written at the request rate, and each B-tree a row lands in costs the log
-- writer about a microsecond. This rebuild drops two of them:
-- * AUTOINCREMENT: its counter row in sqlite_sequence was rewritten on every insert. Log ids
--   still only grow while the newest rows stay (ids are never referenced from elsewhere).
-- * the (status, timestamp) index: it now covers only error rows, the rare ones a status filter
--   looks for; success pages walk idx_logs_time, where nearly every row matches.

CREATE TABLE api_call_logs_new (
    id                INTEGER PRIMARY KEY,
    api_key_id        INTEGER REFERENCES api_keys (id) ON DELETE CASCADE,
    timestamp         INTEGER NOT NULL,
    model             TEXT,
    status            TEXT    NOT NULL CHECK (status IN ('success', 'error')),
    http_status       INTEGER NOT NULL,
    response_time     INTEGER NOT NULL,
    ip_address        TEXT,
    endpoint          TEXT    NOT NULL,
    error_message     TEXT,
    request_size      INTEGER NOT NULL DEFAULT 0,
    response_size     INTEGER NOT NULL DEFAULT 0,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    total_tokens      INTEGER,
    stream            INTEGER NOT NULL DEFAULT 0
);

INSERT INTO api_call_logs_new (id, api_key_id, timestamp, model, status, http_status,
    response_time, ip_address, endpoint, error_message, request_size, response_size,
    prompt_tokens, completion_tokens, total_tokens, stream)
SELECT id, api_key_id, timestamp, model, status, http_status,
    response_time, ip_address, endpoint, error_message, request_size, response_size,
    prompt_tokens, completion_tokens, total_tokens, stream
FROM api_call_logs;

DROP TABLE api_call_logs;
ALTER TABLE api_call_logs_new RENAME TO api_call_logs;

-- One key's logs newest first (and its per-day stats over a window).
CREATE INDEX idx_logs_key_time ON api_call_logs (api_key_id, timestamp DESC);
-- All logs newest first, and per-day aggregation over a time window.
CREATE INDEX idx_logs_time ON api_call_logs (timestamp DESC);
-- Error logs newest first. Queries must say `status = 'error'` literally to use it.
CREATE INDEX idx_logs_errors ON api_call_logs (timestamp DESC) WHERE status = 'error';
