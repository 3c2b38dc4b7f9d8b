-- es_append_batch without the per-append relocking (issue #17, measured:
-- see the README's bench table). The batch takes every lock of its group
-- in one ordered pass first (es_lock); es_append then took its shared
-- keys again, per append, and set synchronous_commit again. This
-- es_append_locked is es_append without both: only the batch calls it.
CREATE OR REPLACE FUNCTION es_append_locked(
    p_stream TEXT, p_category TEXT, p_expected_kind INTEGER, p_expected BIGINT,
    p_ids UUID[], p_types TEXT[], p_schemas INTEGER[], p_payloads JSONB[], p_metas JSONB[],
    p_tags TEXT[], p_recorded_at BIGINT
) RETURNS TABLE (status INTEGER, current_version BIGINT, positions BIGINT[])
LANGUAGE plpgsql AS $$
DECLARE
    v_version BIGINT;
    v_deleted BOOLEAN;
    v_positions BIGINT[];
    v_count INTEGER := COALESCE(array_length(p_ids, 1), 0);
    v_ordinal INTEGER;
    v_base BIGINT;
BEGIN
    -- The row exists and is locked: es_lock upserted it.
    SELECT s.version, s.deleted INTO v_version, v_deleted
        FROM es_streams s WHERE s.stream_id = p_stream FOR UPDATE;
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
    RETURN QUERY SELECT 0, v_version, v_positions;
END;
$$;

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
    PERFORM set_config('synchronous_commit', 'on', true);
    PERFORM es_lock(v_keys, array_fill(FALSE, ARRAY[cardinality(v_keys)]), p_streams);
    FOR i IN 1 .. COALESCE(cardinality(p_streams), 0) LOOP
        v_to := v_from + p_counts[i] - 1;
        RETURN QUERY SELECT * FROM es_append_locked(p_streams[i], p_categories[i], p_kinds[i], p_expected[i],
            p_ids[v_from:v_to], p_types[v_from:v_to], p_schemas[v_from:v_to],
            p_payloads[v_from:v_to], p_metas[v_from:v_to], p_tags[v_from:v_to],
            p_recorded_at);
        v_from := v_to + 1;
    END LOOP;
    -- The crate passes '' and notifies after the commit (see es_append).
    IF p_channel <> '' THEN
        PERFORM pg_notify(p_channel, (SELECT MAX(e.global_position)::TEXT FROM es_events e
            WHERE e.event_id = ANY(p_ids)));
    END IF;
END;
$$;
