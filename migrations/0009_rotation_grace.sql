-- Rotation with a grace period: `regenerate` with `grace_hours` keeps the replaced secret
-- working until previous_key_expires_at (UTC ms). Set only by regenerate; a later regenerate
-- replaces it. Not exported: a grace period ends with the database it began in.
ALTER TABLE api_keys ADD COLUMN previous_key_hash       TEXT;
ALTER TABLE api_keys ADD COLUMN previous_key_expires_at INTEGER;
CREATE UNIQUE INDEX idx_keys_previous_hash ON api_keys (previous_key_hash)
    WHERE previous_key_hash IS NOT NULL;
