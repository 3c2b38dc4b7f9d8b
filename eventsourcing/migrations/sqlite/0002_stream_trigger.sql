-- Keep es_streams.version in step with inserted events inside SQLite itself,
-- saving the append a statement (and a round trip to sqlx's worker thread).
CREATE TRIGGER IF NOT EXISTS es_events_stream_version AFTER INSERT ON es_events
BEGIN
    INSERT INTO es_streams (stream_id, version, deleted) VALUES (NEW.stream_id, NEW.stream_version, 0)
    ON CONFLICT (stream_id) DO UPDATE SET version = MAX(version, excluded.version);
END;
