-- The console's log filter by model (GET /api/api-logs?model=…, /api/api-keys/{id}/logs?model=…):
-- its page walks this index newest first and its total counts only the model's rows, never the
-- whole table. (Numbered 0009: 0006 is the per-key limits', 0007/0008 the operations helper's.)
CREATE INDEX idx_logs_model_time ON api_call_logs (model, timestamp DESC);
