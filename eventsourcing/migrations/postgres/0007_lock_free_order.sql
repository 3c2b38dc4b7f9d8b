-- The global order without the schema-wide writer lock (issue #17; the
-- design and its trade-offs are in src/store/postgres.rs and the README).
--
-- Positions: an event's global position is its writing transaction's id
-- (xid8) * 65536 + its ordinal within that transaction, so positions grow
-- with the transaction id. Every transaction below
-- pg_snapshot_xmin(pg_current_snapshot()) has ended, so a reader that reads
-- only positions below es_visible_below() reads a prefix of the order that
-- no transaction can still write into: nothing commits later below it.
-- Rows written before this migration keep their positions 1..N, below every
-- new one (a transaction holds at most 65536 events, so N stays far below
-- 65536 * the current transaction id).
ALTER TABLE es_events ALTER COLUMN global_position DROP IDENTITY IF EXISTS;

-- The first position a reader must not read yet: every lower one is final.
CREATE OR REPLACE FUNCTION es_visible_below() RETURNS BIGINT
LANGUAGE sql STABLE AS $$
    SELECT pg_snapshot_xmin(pg_current_snapshot())::TEXT::BIGINT * 65536
$$;

-- What an event of these types and tags could match in an append condition
-- (src/dcb.rs): '*' (a query item with neither tags nor types matches every
-- event), 'y:' || type, 't:' || tag. NOTE: `event_lock_keys` and
-- `condition_lock_keys` in src/store/postgres.rs and the lock loop of
-- es_append below build the same texts.
CREATE OR REPLACE FUNCTION es_event_keys(p_types TEXT[], p_tags TEXT[]) RETURNS TEXT[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT array_agg(k) FROM (
        SELECT '*' AS k
        UNION SELECT 'y:' || t FROM unnest(p_types) AS t
        UNION SELECT 't:' || j
              FROM unnest(p_tags) AS g(tags), jsonb_array_elements_text(g.tags::jsonb) AS j
    ) keys
$$;

-- Takes transaction-scoped advisory locks on the keys (shared, or exclusive
-- where `p_exclusive` says so for any copy of the key), then row locks on
-- the streams (inserting a version-0 row for a new one, which reads as no
-- stream). Every transaction takes its locks in this one order (keys by
-- hash, then streams by id), so appends never deadlock on each other.
CREATE OR REPLACE FUNCTION es_lock(p_keys TEXT[], p_exclusive BOOLEAN[], p_streams TEXT[])
RETURNS VOID LANGUAGE plpgsql AS $$
DECLARE
    r RECORD;
BEGIN
    FOR r IN
        SELECT hashtextextended(current_schema() || chr(31) || u.k, 7239) AS h, bool_or(u.x) AS x
        FROM unnest(p_keys, p_exclusive) AS u(k, x) GROUP BY 1 ORDER BY 1
    LOOP
        IF r.x THEN
            PERFORM pg_advisory_xact_lock(r.h);
        ELSE
            PERFORM pg_advisory_xact_lock_shared(r.h);
        END IF;
    END LOOP;
    IF cardinality(p_streams) > 0 THEN
        INSERT INTO es_streams AS s (stream_id, version, deleted)
        SELECT DISTINCT u, 0::BIGINT, FALSE FROM unnest(p_streams) AS u ORDER BY 1
        ON CONFLICT (stream_id) DO UPDATE SET version = s.version;
    END IF;
END;
$$;

-- One round trip per append: shared locks on what the events could match,
-- the stream's row lock (per-stream optimistic concurrency), checks, insert,
-- stream update and (for older callers) NOTIFY, server-side. Status: 0 = written, 1 = conflict,
-- 2 = first event id already stored (the client decides whether it is an
-- idempotent repeat), 3 = stream deleted. Expected kind: 0 Any, 1 NoStream,
-- 2 StreamExists, 3 Exact.
CREATE OR REPLACE FUNCTION es_append(
    p_stream TEXT, p_category TEXT, p_expected_kind INTEGER, p_expected BIGINT,
    p_ids UUID[], p_types TEXT[], p_schemas INTEGER[], p_payloads JSONB[], p_metas JSONB[],
    p_tags TEXT[], p_recorded_at BIGINT, p_channel TEXT
) RETURNS TABLE (status INTEGER, current_version BIGINT, positions BIGINT[])
LANGUAGE plpgsql AS $$
DECLARE
    v_version BIGINT;
    v_deleted BOOLEAN;
    v_positions BIGINT[];
    v_count INTEGER := COALESCE(array_length(p_ids, 1), 0);
    v_hash BIGINT;
    v_ordinal INTEGER;
    v_base BIGINT;
BEGIN
    PERFORM set_config('synchronous_commit', 'on', true);
    -- Shared locks on what the events could match: es_event_keys and the
    -- first half of es_lock, inlined (a SQL function called from PL/pgSQL
    -- is planned on every call; this loop's plan is cached).
    FOR v_hash IN
        SELECT DISTINCT hashtextextended(current_schema() || chr(31) || k.k, 7239)
        FROM (SELECT '*' AS k
              UNION ALL SELECT 'y:' || t FROM unnest(p_types) AS t
              UNION ALL SELECT 't:' || j
                  FROM unnest(p_tags) AS g(tags), jsonb_array_elements_text(g.tags::jsonb) AS j
                  WHERE g.tags <> '[]') AS k
        ORDER BY 1
    LOOP
        PERFORM pg_advisory_xact_lock_shared(v_hash);
    END LOOP;
    -- The stream's row lock, held until commit: appends to one stream take
    -- turns, appends to different streams run in parallel.
    SELECT s.version, s.deleted INTO v_version, v_deleted
        FROM es_streams s WHERE s.stream_id = p_stream FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO es_streams AS s (stream_id, version, deleted) VALUES (p_stream, 0, FALSE)
            ON CONFLICT (stream_id) DO UPDATE SET version = s.version
            RETURNING s.version, s.deleted INTO v_version, v_deleted;
    END IF;
    IF v_count > 0 AND EXISTS (SELECT 1 FROM es_events e WHERE e.event_id = p_ids[1]) THEN
        RETURN QUERY SELECT 2, 0::BIGINT, NULL::BIGINT[];
        RETURN;
    END IF;
    IF v_deleted THEN
        RETURN QUERY SELECT 3, v_version, NULL::BIGINT[];
        RETURN;
    END IF;
    IF NOT (p_expected_kind = 0
            OR (p_expected_kind = 1 AND v_version = 0)
            OR (p_expected_kind = 2 AND v_version > 0)
            OR (p_expected_kind = 3 AND v_version = p_expected)) THEN
        RETURN QUERY SELECT 1, v_version, NULL::BIGINT[];
        RETURN;
    END IF;
    IF v_count = 0 THEN
        RETURN QUERY SELECT 0, v_version, ARRAY[]::BIGINT[];
        RETURN;
    END IF;
    -- The transaction's next ordinal, transaction-local (a savepoint rolled
    -- back rolls it back with its rows).
    v_ordinal := COALESCE(NULLIF(current_setting('trellis.es_ordinal', true), '')::INTEGER, 0);
    IF v_ordinal + v_count > 65536 THEN
        RAISE EXCEPTION 'es_append: more than 65536 events in one transaction'
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    PERFORM set_config('trellis.es_ordinal', (v_ordinal + v_count)::TEXT, true);
    v_base := pg_current_xact_id()::TEXT::BIGINT * 65536 + v_ordinal - 1;
    WITH ins AS (
        INSERT INTO es_events (global_position, event_id, stream_id, stream_version, category, event_type, schema_version, recorded_at, payload, metadata, tags)
        SELECT v_base + u.ord, u.id, p_stream, v_version + u.ord, p_category, u.typ, u.sv, p_recorded_at, u.payload, u.meta, u.tags
        FROM unnest(p_ids, p_types, p_schemas, p_payloads, p_metas, p_tags) WITH ORDINALITY AS u(id, typ, sv, payload, meta, tags, ord)
        ORDER BY u.ord
        RETURNING es_events.stream_version, es_events.global_position, es_events.tags
    ), tagged AS (
        INSERT INTO es_tags (tag, global_position)
        SELECT DISTINCT j.tag, ins.global_position
        FROM ins CROSS JOIN LATERAL jsonb_array_elements_text(ins.tags::jsonb) AS j(tag)
        WHERE ins.tags <> '[]'
    )
    SELECT array_agg(ins.global_position ORDER BY ins.stream_version) INTO v_positions FROM ins;
    v_version := v_version + v_count;
    UPDATE es_streams SET version = v_version WHERE stream_id = p_stream;
    -- The crate passes '' and notifies after the commit instead (NOTIFY
    -- would serialise the commits); a replica of an older version passes
    -- its channel.
    IF p_channel <> '' THEN
        PERFORM pg_notify(p_channel, v_positions[v_count]::TEXT);
    END IF;
    RETURN QUERY SELECT 0, v_version, v_positions;
END;
$$;

-- The signature from before tags (migration 4), for a replica still on that
-- version during a rolling upgrade: the same append, untagged.
CREATE OR REPLACE FUNCTION es_append(
    p_stream TEXT, p_category TEXT, p_expected_kind INTEGER, p_expected BIGINT,
    p_ids UUID[], p_types TEXT[], p_schemas INTEGER[], p_payloads JSONB[], p_metas JSONB[],
    p_recorded_at BIGINT, p_channel TEXT
) RETURNS TABLE (status INTEGER, current_version BIGINT, positions BIGINT[])
LANGUAGE sql AS $$
    SELECT * FROM es_append(p_stream, p_category, p_expected_kind, p_expected, p_ids, p_types,
        p_schemas, p_payloads, p_metas,
        array_fill('[]'::TEXT, ARRAY[COALESCE(array_length(p_ids, 1), 0)]),
        p_recorded_at, p_channel)
$$;

-- A single-stream conditional append in one round trip: exclusive locks on
-- the condition's keys (`p_lock_keys`, built by the crate: the first tag of
-- each query item with tags, else each of its types, else '*'), shared ones
-- on the events' own keys, all in one ordered pass; then the condition
-- query (`$1` the position, `$2` the tags and types, `$3` the append's own
-- event ids; it returns the first foreign matching position or no row) in
-- a new statement, so a new READ COMMITTED snapshot that sees every append
-- holding a conflicting key before; then `es_append`. An append that could
-- match the condition holds the shared lock of one of those keys until it
-- commits, so none is in flight when the check runs, and none starts
-- before this one commits. Status 4 = condition failed, `current_version`
-- = the matching position.
CREATE OR REPLACE FUNCTION es_append_if(
    p_stream TEXT, p_category TEXT, p_expected_kind INTEGER, p_expected BIGINT,
    p_ids UUID[], p_types TEXT[], p_schemas INTEGER[], p_payloads JSONB[], p_metas JSONB[],
    p_tags TEXT[], p_recorded_at BIGINT, p_channel TEXT,
    p_condition TEXT, p_after BIGINT, p_texts TEXT[],
    p_lock_keys TEXT[], p_lock_exclusive BOOLEAN[]
) RETURNS TABLE (status INTEGER, current_version BIGINT, positions BIGINT[])
LANGUAGE plpgsql AS $$
DECLARE
    v_position BIGINT;
    v_keys TEXT[] := es_event_keys(p_types, p_tags);
BEGIN
    PERFORM es_lock(p_lock_keys || v_keys,
        p_lock_exclusive || array_fill(FALSE, ARRAY[cardinality(v_keys)]), ARRAY[]::TEXT[]);
    EXECUTE p_condition INTO v_position USING p_after, p_texts, p_ids;
    IF v_position IS NOT NULL THEN
        RETURN QUERY SELECT 4, v_position, NULL::BIGINT[];
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM es_append(p_stream, p_category, p_expected_kind, p_expected,
        p_ids, p_types, p_schemas, p_payloads, p_metas, p_tags, p_recorded_at, p_channel);
END;
$$;

-- The signature of migration 6, for a replica still on that version: it
-- does not say which keys its condition reads, so it takes '*'
-- exclusively, which every append holds shared: as safe as the old writer
-- lock, and as serial.
CREATE OR REPLACE FUNCTION es_append_if(
    p_stream TEXT, p_category TEXT, p_expected_kind INTEGER, p_expected BIGINT,
    p_ids UUID[], p_types TEXT[], p_schemas INTEGER[], p_payloads JSONB[], p_metas JSONB[],
    p_tags TEXT[], p_recorded_at BIGINT, p_channel TEXT,
    p_condition TEXT, p_after BIGINT, p_texts TEXT[]
) RETURNS TABLE (status INTEGER, current_version BIGINT, positions BIGINT[])
LANGUAGE sql AS $$
    SELECT * FROM es_append_if(p_stream, p_category, p_expected_kind, p_expected, p_ids, p_types,
        p_schemas, p_payloads, p_metas, p_tags, p_recorded_at, p_channel,
        p_condition, p_after, p_texts, ARRAY['*'], ARRAY[TRUE])
$$;

-- Several single-stream, unconditional appends (a group of the store's
-- writer) in one statement, so in one round trip and one transaction: every
-- lock first, in the one order, then `es_append` per request, the events of
-- request i being the next `p_counts[i]` of the event arrays. One row per
-- request, in order. A check failure (status 1–3) writes nothing for its
-- own request only.
CREATE OR REPLACE FUNCTION es_append_batch(
    p_streams TEXT[], p_categories TEXT[], p_kinds INTEGER[], p_expected BIGINT[], p_counts INTEGER[],
    p_ids UUID[], p_types TEXT[], p_schemas INTEGER[], p_payloads JSONB[], p_metas JSONB[],
    p_tags TEXT[], p_recorded_at BIGINT, p_channel TEXT
) RETURNS TABLE (status INTEGER, current_version BIGINT, positions BIGINT[])
LANGUAGE plpgsql AS $$
DECLARE
    v_keys TEXT[] := es_event_keys(p_types, p_tags);
    v_from INTEGER := 1;
    v_to INTEGER;
BEGIN
    PERFORM es_lock(v_keys, array_fill(FALSE, ARRAY[cardinality(v_keys)]), p_streams);
    FOR i IN 1 .. COALESCE(cardinality(p_streams), 0) LOOP
        v_to := v_from + p_counts[i] - 1;
        RETURN QUERY SELECT * FROM es_append(p_streams[i], p_categories[i], p_kinds[i], p_expected[i],
            p_ids[v_from:v_to], p_types[v_from:v_to], p_schemas[v_from:v_to],
            p_payloads[v_from:v_to], p_metas[v_from:v_to], p_tags[v_from:v_to],
            p_recorded_at, p_channel);
        v_from := v_to + 1;
    END LOOP;
END;
$$;
