-- One active holder per name (outbox relays): see src/lease.rs.
CREATE TABLE IF NOT EXISTS es_leases (
    name     TEXT   PRIMARY KEY,
    owner    TEXT   NOT NULL,
    epoch    BIGINT NOT NULL,
    until_ms BIGINT NOT NULL
);
