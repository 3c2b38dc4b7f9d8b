CREATE TABLE IF NOT EXISTS es_events (
    global_position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        UUID    NOT NULL UNIQUE,
    stream_id       TEXT    NOT NULL,
    stream_version  BIGINT  NOT NULL,
    category        TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    recorded_at     BIGINT  NOT NULL,
    payload         JSONB   NOT NULL,
    metadata        JSONB   NOT NULL,
    UNIQUE (stream_id, stream_version)
);
CREATE INDEX IF NOT EXISTS es_events_category ON es_events (category, global_position);
CREATE INDEX IF NOT EXISTS es_events_type ON es_events (event_type, global_position);

CREATE TABLE IF NOT EXISTS es_streams (
    stream_id TEXT    PRIMARY KEY,
    version   BIGINT  NOT NULL,
    deleted   BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE IF NOT EXISTS es_snapshots (
    stream_id      TEXT    PRIMARY KEY,
    version        BIGINT  NOT NULL,
    schema_version INTEGER NOT NULL,
    state          JSONB   NOT NULL
);

CREATE TABLE IF NOT EXISTS es_checkpoints (
    name     TEXT   PRIMARY KEY,
    position BIGINT NOT NULL
);
