-- Dynamic consistency boundaries (src/dcb.rs): events carry tags (a JSON
-- array in TEXT, like SQLite's). Existing events read as untagged (adding a
-- column with a constant default rewrites nothing); `es_tags` indexes
-- (tag, position) for queries and append conditions. es_append gains
-- `p_tags` as a new overload; the old signature stays, so a replica still
-- running the previous version keeps appending (untagged) during a rolling
-- upgrade.
ALTER TABLE es_events ADD COLUMN IF NOT EXISTS tags TEXT NOT NULL DEFAULT '[]';
CREATE TABLE IF NOT EXISTS es_tags (
    tag             TEXT   NOT NULL,
    global_position BIGINT NOT NULL,
    PRIMARY KEY (tag, global_position)
);
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
BEGIN
    PERFORM set_config('synchronous_commit', 'on', true);
    -- Serialises position assignment per schema until commit (gap-free order).
    PERFORM pg_advisory_xact_lock(7239, hashtext(current_schema()));
    IF v_count > 0 AND EXISTS (SELECT 1 FROM es_events e WHERE e.event_id = p_ids[1]) THEN
        RETURN QUERY SELECT 2, 0::BIGINT, NULL::BIGINT[];
        RETURN;
    END IF;
    SELECT s.version, s.deleted INTO v_version, v_deleted FROM es_streams s WHERE s.stream_id = p_stream;
    v_version := COALESCE(v_version, 0);
    IF COALESCE(v_deleted, FALSE) THEN
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
    WITH ins AS (
        INSERT INTO es_events (event_id, stream_id, stream_version, category, event_type, schema_version, recorded_at, payload, metadata, tags)
        SELECT u.id, p_stream, v_version + u.ord, p_category, u.typ, u.sv, p_recorded_at, u.payload, u.meta, u.tags
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
    INSERT INTO es_streams AS s (stream_id, version, deleted) VALUES (p_stream, v_version, FALSE)
        ON CONFLICT (stream_id) DO UPDATE SET version = EXCLUDED.version;
    PERFORM pg_notify(p_channel, v_positions[v_count]::TEXT);
    RETURN QUERY SELECT 0, v_version, v_positions;
END;
$$;
