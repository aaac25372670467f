-- Several upstreams and Anthropic usage (SPEC §12, §13). No index, view or trigger names
-- `cached_tokens`, so the rename touches only the column.
-- * cache_read_tokens: prompt tokens the provider read from its cache (OpenAI's
--   `prompt_tokens_details.cached_tokens`, Anthropic's `cache_read_input_tokens`); part of
--   prompt_tokens.
-- * cache_write_tokens: prompt tokens written to the provider's cache (Anthropic's
--   `cache_creation_input_tokens`); part of prompt_tokens.
-- * upstream_id: the upstream that answered, or was tried last (0: the built-in `default`;
--   NULL: none was tried, e.g. a refused request). Not a foreign key: an upstream's rows stay
--   when it is removed.
-- * attempts: the upstreams tried for the request (0 when none was; NULL on older rows).
-- Added columns cost the log writer nothing per row beyond their bytes: no index.
ALTER TABLE api_call_logs RENAME COLUMN cached_tokens TO cache_read_tokens;
ALTER TABLE api_call_logs ADD COLUMN cache_write_tokens INTEGER;
ALTER TABLE api_call_logs ADD COLUMN upstream_id INTEGER;
ALTER TABLE api_call_logs ADD COLUMN attempts INTEGER;
