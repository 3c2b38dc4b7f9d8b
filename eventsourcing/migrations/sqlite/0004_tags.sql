-- Dynamic consistency boundaries (src/dcb.rs): events carry tags. Existing
-- events read as untagged; `es_tags` indexes (tag, position) for queries
-- and append conditions, filled by a trigger so appends stay one statement.
ALTER TABLE es_events ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
CREATE TABLE IF NOT EXISTS es_tags (
    tag             TEXT    NOT NULL,
    global_position INTEGER NOT NULL,
    PRIMARY KEY (tag, global_position)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS es_events_tags AFTER INSERT ON es_events WHEN NEW.tags <> '[]'
BEGIN
    INSERT OR IGNORE INTO es_tags (tag, global_position)
    SELECT value, NEW.global_position FROM json_each(NEW.tags);
END;
