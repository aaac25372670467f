-- Per-key restrictions (SPEC §10): each a JSON array of texts, `[]` = no restriction.
-- allowed_models: model names or `prefix*`; allowed_clients: User-Agent patterns (exact or
-- `prefix*`, case-insensitive); allowed_ips: IP addresses or CIDRs; allowed_endpoints: paths
-- under /v1/ (exact or `prefix*`); tags: labels the key list filters by.
ALTER TABLE api_keys ADD COLUMN allowed_models    TEXT NOT NULL DEFAULT '[]';
ALTER TABLE api_keys ADD COLUMN allowed_clients   TEXT NOT NULL DEFAULT '[]';
ALTER TABLE api_keys ADD COLUMN allowed_ips       TEXT NOT NULL DEFAULT '[]';
ALTER TABLE api_keys ADD COLUMN allowed_endpoints TEXT NOT NULL DEFAULT '[]';
ALTER TABLE api_keys ADD COLUMN tags              TEXT NOT NULL DEFAULT '[]';
