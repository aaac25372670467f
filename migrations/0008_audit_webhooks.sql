-- The audit log of admin changes (issue 12). No foreign key to api_keys: deleting a key keeps
-- its entries, with the id and name it had. `details` is JSON: the non-secret fields that
-- changed ({"changes": {"expires_at": {"old": …, "new": …}}}), a batch's key ids, or counts.
CREATE TABLE audit_log (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       INTEGER NOT NULL,          -- UTC ms
    via      TEXT    NOT NULL,          -- token | session | cli
    os_user  TEXT,                      -- the CLI's OS user, when known
    ip       TEXT,                      -- the client's address (none for the CLI)
    action   TEXT    NOT NULL,
    key_id   INTEGER,
    key_name TEXT,
    details  TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log (at, id);
CREATE INDEX audit_log_key ON audit_log (key_id, at, id);
CREATE INDEX audit_log_action ON audit_log (action, at, id);

-- Webhook deliveries not yet made: one row per event and URL, deleted once delivered (or
-- given up after the last attempt). The body is signed when it is sent. `target` is the
-- SHA-256 of the URL (hex), not the URL, which may carry a token.
CREATE TABLE webhook_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    target          TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    body            TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at, id);

-- The expiry notices already queued, so the periodic scan sends each once: per key, notice
-- (expiring_7d, expiring_1d, expired) and the expiry it was about (a renewed key gets new ones).
CREATE TABLE webhook_notices (
    api_key_id INTEGER NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    notice     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (api_key_id, notice, expires_at)
);
