-- One active holder per name (outbox relays): see src/lease.rs.
CREATE TABLE IF NOT EXISTS es_leases (
    name     TEXT    PRIMARY KEY,
    owner    TEXT    NOT NULL,
    epoch    INTEGER NOT NULL,
    until_ms INTEGER NOT NULL
);
