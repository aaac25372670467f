-- Upstreams configured at run time (SPEC §12). The environment's upstream is the built-in
-- `default` (id 0, no row). AUTOINCREMENT: an id is never reused, so call-log rows
-- (`upstream_id`) keep naming the upstream that answered them.
CREATE TABLE upstreams (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    name              TEXT    NOT NULL UNIQUE,
    kind              TEXT    NOT NULL,            -- openai | anthropic
    base_url          TEXT    NOT NULL,
    encrypted_api_key TEXT,                        -- Fernet token; NULL: no credential
    auth_header       TEXT    NOT NULL,            -- bearer | api-key | x-api-key
    models            TEXT    NOT NULL DEFAULT '[]', -- JSON array of names / prefix* patterns
    model_map         TEXT    NOT NULL DEFAULT '{}', -- JSON object: client model -> upstream model
    priority          INTEGER NOT NULL DEFAULT 0,
    weight            INTEGER NOT NULL DEFAULT 1,
    enabled           INTEGER NOT NULL DEFAULT 1,
    timeout_seconds   INTEGER,
    stream_usage      TEXT    NOT NULL DEFAULT 'inject', -- inject | off
    extra_headers     TEXT    NOT NULL DEFAULT '{}', -- JSON object: header -> value
    created_at        INTEGER NOT NULL,            -- UTC ms
    updated_at        INTEGER NOT NULL             -- UTC ms
);

-- A key bound to upstreams (JSON array of ids; empty: all) and to route kinds (JSON array of
-- `openai` / `anthropic`; empty: all).
ALTER TABLE api_keys ADD COLUMN upstream_ids TEXT NOT NULL DEFAULT '[]';
ALTER TABLE api_keys ADD COLUMN permissions TEXT NOT NULL DEFAULT '[]';
