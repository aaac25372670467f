-- keygate schema v1. Times are UTC milliseconds since the Unix epoch (INTEGER).

CREATE TABLE api_keys (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    key_hash          TEXT    NOT NULL UNIQUE,
    encrypted_key     TEXT,
    key_preview       TEXT    NOT NULL,
    name              TEXT    NOT NULL,
    description       TEXT,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    expires_at        INTEGER,
    expiration_mode   TEXT    NOT NULL DEFAULT 'fixed' CHECK (expiration_mode IN ('fixed', 'activation')),
    activation_period INTEGER,
    activation_unit   TEXT    CHECK (activation_unit IN ('hours', 'days')),
    activated_at      INTEGER,
    is_active         INTEGER NOT NULL DEFAULT 1,
    revoked_at        INTEGER,
    usage_count       INTEGER NOT NULL DEFAULT 0,
    last_used_at      INTEGER
);

CREATE INDEX idx_api_keys_expires_at ON api_keys (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE api_call_logs (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
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

-- One key's logs newest first (and its per-day stats over a window).
CREATE INDEX idx_logs_key_time ON api_call_logs (api_key_id, timestamp DESC);
-- All logs newest first, and per-day aggregation over a time window.
CREATE INDEX idx_logs_time ON api_call_logs (timestamp DESC);
-- Filters by status (all logs, newest first).
CREATE INDEX idx_logs_status_time ON api_call_logs (status, timestamp DESC);

-- Server-side settings, e.g. the hash of a generated admin token.
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
