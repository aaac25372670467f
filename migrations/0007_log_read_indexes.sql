-- Log pages read newest first: `ORDER BY timestamp DESC, id DESC`. An index stores its rows'
-- ids ascending after its columns, so a `timestamp DESC` index walked forwards gives equal
-- timestamps in ascending id order and SQLite sorted every page through a temp B-tree. These
-- ascending indexes, walked backwards, give exactly the page order (no sort, and an OFFSET
-- skips index entries without reading rows). Each one serves one filter of the admin API:
--   all logs                 idx_logs_time
--   key                      idx_logs_key_time (also the ON DELETE CASCADE of a key's rows)
--   status = error           idx_logs_errors (partial: error rows only)
--   key + status = error     idx_logs_key_errors (partial)
--   model                    idx_logs_model_time
-- Success filters walk the unfiltered index of their key (or of all logs) and skip the few
-- error rows. Pruning old rows walks idx_logs_time from its oldest end.
DROP INDEX IF EXISTS idx_logs_time;
DROP INDEX IF EXISTS idx_logs_key_time;
DROP INDEX IF EXISTS idx_logs_errors;

CREATE INDEX idx_logs_time ON api_call_logs (timestamp);
CREATE INDEX idx_logs_key_time ON api_call_logs (api_key_id, timestamp);
CREATE INDEX idx_logs_errors ON api_call_logs (timestamp) WHERE status = 'error';
CREATE INDEX idx_logs_key_errors ON api_call_logs (api_key_id, timestamp) WHERE status = 'error';
CREATE INDEX idx_logs_model_time ON api_call_logs (model, timestamp);
