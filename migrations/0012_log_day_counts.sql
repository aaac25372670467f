-- Exact counts of the call-log rows held, per key, UTC day and model, so that a log page's
-- total is exact without counting the log, and a page by number deep into millions of rows
-- starts at its day instead of skipping every newer index entry (an OFFSET of 10M entries
-- took ~235 ms). Unlike usage_daily (the usage rollup, which keeps the usage of pruned rows
-- and leaves out rows without a key), these counts follow the rows themselves. The two ways
-- rows are inserted add their counts per group in the same transaction (the call-log writer
-- per batch, an import per move-in: `ADD_DAY_COUNTS` in src/store/logs.rs), as a trigger per
-- inserted row cost ~1.6 µs each; the triggers below follow every deletion (retention, a
-- key's ON DELETE CASCADE) and change (an import overwriting a row) in the statement that
-- makes it. tests/api/scale.rs checks the counts against the rows after each of these.
--   api_key_id  the row's key; 0 for rows without one (no key has id 0)
--   day         UTC days since the epoch: timestamp / 86400000 rounded down, also before
--               1970 (an import may bring such rows; SQLite's `/` rounds towards zero, so
--               it is written (t - (t % 86400000 + 86400000) % 86400000) / 86400000)
--   model       '' for rows without one
--   rows        rows held; errors: those with status = 'error'
-- A group whose last row goes is deleted, so the table holds only groups with rows.
CREATE TABLE log_day_counts (
    api_key_id INTEGER NOT NULL,
    day        INTEGER NOT NULL,
    model      TEXT    NOT NULL,
    rows       INTEGER NOT NULL,
    errors     INTEGER NOT NULL,
    PRIMARY KEY (api_key_id, day, model)
) WITHOUT ROWID;

INSERT INTO log_day_counts (api_key_id, day, model, rows, errors)
SELECT COALESCE(api_key_id, 0),
    (timestamp - (timestamp % 86400000 + 86400000) % 86400000) / 86400000,
    COALESCE(model, ''), COUNT(*), SUM(status = 'error')
FROM api_call_logs
GROUP BY 1, 2, 3;

CREATE TRIGGER log_day_counts_delete AFTER DELETE ON api_call_logs BEGIN
    UPDATE log_day_counts SET rows = rows - 1, errors = errors - (old.status = 'error')
    WHERE api_key_id = COALESCE(old.api_key_id, 0)
        AND day = (old.timestamp - (old.timestamp % 86400000 + 86400000) % 86400000) / 86400000
        AND model = COALESCE(old.model, '');
    DELETE FROM log_day_counts
    WHERE api_key_id = COALESCE(old.api_key_id, 0)
        AND day = (old.timestamp - (old.timestamp % 86400000 + 86400000) % 86400000) / 86400000
        AND model = COALESCE(old.model, '') AND rows <= 0;
END;

-- An import that overwrites a row by id moves it between groups.
CREATE TRIGGER log_day_counts_update AFTER UPDATE OF api_key_id, timestamp, model, status
ON api_call_logs BEGIN
    UPDATE log_day_counts SET rows = rows - 1, errors = errors - (old.status = 'error')
    WHERE api_key_id = COALESCE(old.api_key_id, 0)
        AND day = (old.timestamp - (old.timestamp % 86400000 + 86400000) % 86400000) / 86400000
        AND model = COALESCE(old.model, '');
    DELETE FROM log_day_counts
    WHERE api_key_id = COALESCE(old.api_key_id, 0)
        AND day = (old.timestamp - (old.timestamp % 86400000 + 86400000) % 86400000) / 86400000
        AND model = COALESCE(old.model, '') AND rows <= 0;
    INSERT INTO log_day_counts (api_key_id, day, model, rows, errors)
    VALUES (COALESCE(new.api_key_id, 0),
        (new.timestamp - (new.timestamp % 86400000 + 86400000) % 86400000) / 86400000,
        COALESCE(new.model, ''), 1, new.status = 'error')
    ON CONFLICT (api_key_id, day, model) DO UPDATE SET rows = rows + 1,
        errors = errors + excluded.errors;
END;
