-- The cost of each call in USD (from the price table when the call ended; 0 for rows written
-- before costs were kept, and for models without a price), and the prompt tokens the provider
-- read from its cache (`prompt_tokens_details.cached_tokens`, part of prompt_tokens).
ALTER TABLE api_call_logs ADD COLUMN cost REAL NOT NULL DEFAULT 0;
ALTER TABLE api_call_logs ADD COLUMN cached_tokens INTEGER;
