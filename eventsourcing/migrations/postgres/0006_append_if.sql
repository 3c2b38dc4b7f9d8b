-- A single-stream conditional append (src/dcb.rs) in one round trip, as a
-- plain append is: take the writer lock, run the condition query (built by
-- the crate from the query's items: `$1` the position, `$2` the tags and
-- types, `$3` the append's own event ids; it returns the first foreign
-- matching position or no row), then `es_append`. Each statement of a
-- volatile PL/pgSQL function takes a new snapshot under READ COMMITTED, so
-- the check sees every append committed before the lock was granted.
-- Status 4 = condition failed, `current_version` = the matching position.
CREATE OR REPLACE FUNCTION es_append_if(
    p_stream TEXT, p_category TEXT, p_expected_kind INTEGER, p_expected BIGINT,
    p_ids UUID[], p_types TEXT[], p_schemas INTEGER[], p_payloads JSONB[], p_metas JSONB[],
    p_tags TEXT[], p_recorded_at BIGINT, p_channel TEXT,
    p_condition TEXT, p_after BIGINT, p_texts TEXT[]
) RETURNS TABLE (status INTEGER, current_version BIGINT, positions BIGINT[])
LANGUAGE plpgsql AS $$
DECLARE
    v_position BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(7239, hashtext(current_schema()));
    EXECUTE p_condition INTO v_position USING p_after, p_texts, p_ids;
    IF v_position IS NOT NULL THEN
        RETURN QUERY SELECT 4, v_position, NULL::BIGINT[];
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM es_append(p_stream, p_category, p_expected_kind, p_expected,
        p_ids, p_types, p_schemas, p_payloads, p_metas, p_tags, p_recorded_at, p_channel);
END;
$$;
