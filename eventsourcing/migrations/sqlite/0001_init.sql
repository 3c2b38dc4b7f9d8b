-- Events: the global position is the rowid (never reused: events are never deleted).
CREATE TABLE IF NOT EXISTS es_events (
    global_position INTEGER PRIMARY KEY,
    event_id        TEXT    NOT NULL UNIQUE,
    stream_id       TEXT    NOT NULL,
    stream_version  INTEGER NOT NULL,
    category        TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    recorded_at     INTEGER NOT NULL,
    payload         TEXT    NOT NULL,
    metadata        TEXT    NOT NULL,
    UNIQUE (stream_id, stream_version)
);
-- No category/type indexes: filtered reads of "all" scan forward from a
-- checkpoint along the primary key, and every append would pay for them.

CREATE TABLE IF NOT EXISTS es_streams (
    stream_id TEXT    PRIMARY KEY,
    version   INTEGER NOT NULL,
    deleted   INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS es_snapshots (
    stream_id      TEXT    PRIMARY KEY,
    version        INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    state          TEXT    NOT NULL
);

CREATE TABLE IF NOT EXISTS es_checkpoints (
    name     TEXT    PRIMARY KEY,
    position INTEGER NOT NULL
);
