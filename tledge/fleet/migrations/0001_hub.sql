-- The fleet hub: the truth about classes and samples, and the ordered change log devices
-- replay. Every change goes through tledge_push(), which serialises on one advisory lock
-- so that log order (seq) is commit order: a device reading "seq > N" can never skip a
-- change that commits later with a smaller seq.

CREATE TABLE hub_info (key text PRIMARY KEY, value text NOT NULL);
INSERT INTO hub_info VALUES ('hub_id', gen_random_uuid()::text);

CREATE TABLE classes (
    uuid        uuid PRIMARY KEY,
    label       text NOT NULL,
    created     timestamptz NOT NULL DEFAULT now(),
    created_seq bigint NOT NULL,          -- age for merges: the older class is the smaller seq
    device      uuid NOT NULL,
    deleted     timestamptz,              -- tombstone
    merged_into uuid REFERENCES classes(uuid)
);
-- One live class per label: a second "cup" is merged, never created.
CREATE UNIQUE INDEX classes_live_label ON classes(label)
    WHERE deleted IS NULL AND merged_into IS NULL;

CREATE TABLE samples (
    uuid       uuid PRIMARY KEY,
    class_uuid uuid NOT NULL REFERENCES classes(uuid),
    digest     text NOT NULL,            -- sha256 of the crop's bytes
    crop       bytea,                    -- the enrollment crop (JPEG): any model re-embeds it
    created    timestamptz NOT NULL DEFAULT now(),
    device     uuid NOT NULL,
    state      text NOT NULL DEFAULT 'live' CHECK (state IN ('live', 'rejected', 'deleted')),
    reason     text
);
CREATE UNIQUE INDEX samples_live_digest ON samples(class_uuid, digest) WHERE state = 'live';

CREATE TABLE embeddings (
    sample_uuid uuid NOT NULL REFERENCES samples(uuid),
    fingerprint text NOT NULL,
    vector      bytea NOT NULL,           -- float32 (dim,), little-endian
    device      uuid NOT NULL,
    created     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sample_uuid, fingerprint)
);

CREATE TABLE devices (
    id               uuid PRIMARY KEY,
    name             text NOT NULL,
    role             name NOT NULL DEFAULT session_user,
    fingerprint      text,
    last_seen        timestamptz,
    last_applied_seq bigint NOT NULL DEFAULT 0,
    pending          integer NOT NULL DEFAULT 0,
    created          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE changes (
    seq       bigserial PRIMARY KEY,
    change_id uuid UNIQUE,                -- idempotency: a re-sent change is applied once
    device    uuid NOT NULL,
    base_seq  bigint,                     -- the last seq the device had applied when it changed
    kind      text NOT NULL,
    payload   jsonb NOT NULL,             -- {"request": ..., "effects": [...]}
    created   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE settings (key text PRIMARY KEY, value text NOT NULL,
                       updated timestamptz NOT NULL DEFAULT now());
CREATE TABLE models (fingerprint text PRIMARY KEY, name text NOT NULL, data bytea NOT NULL,
                     created timestamptz NOT NULL DEFAULT now());

-- The live class a (possibly merged) class uuid now lives in; NULL when unknown.
CREATE FUNCTION tledge_resolve(p uuid) RETURNS uuid LANGUAGE plpgsql STABLE
SET search_path FROM CURRENT AS $$
DECLARE v uuid := p; m uuid;
BEGIN
    FOR i IN 1..100 LOOP
        SELECT merged_into INTO m FROM classes WHERE uuid = v;
        IF NOT FOUND THEN RETURN NULL; END IF;
        IF m IS NULL THEN RETURN v; END IF;
        v := m;
    END LOOP;
    RAISE EXCEPTION 'class % has a merge chain longer than 100', p;
END $$;

-- Move every live sample of class p_from into p_into (rejecting digests it already holds).
CREATE FUNCTION tledge_merge(p_from uuid, p_into uuid, p_label text) RETURNS jsonb
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE rejected jsonb;
BEGIN
    WITH dup AS (
        UPDATE samples s SET state = 'rejected', reason = 'duplicate'
        WHERE s.class_uuid = p_from AND s.state = 'live' AND EXISTS (
            SELECT 1 FROM samples t WHERE t.class_uuid = p_into AND t.state = 'live'
            AND t.digest = s.digest)
        RETURNING s.uuid)
    SELECT coalesce(jsonb_agg(uuid::text), '[]') INTO rejected FROM dup;
    UPDATE samples SET class_uuid = p_into WHERE class_uuid = p_from;
    UPDATE classes SET merged_into = p_into WHERE uuid = p_from OR merged_into = p_from;
    UPDATE classes SET label = p_label WHERE uuid = p_into;
    RETURN jsonb_build_array(jsonb_build_object('op', 'merge', 'from', p_from, 'into', p_into,
                                                'label', p_label, 'rejected', rejected));
END $$;

CREATE FUNCTION tledge_live_label(p_label text) RETURNS uuid LANGUAGE sql STABLE
SET search_path FROM CURRENT AS $$
    SELECT uuid FROM classes WHERE label = p_label AND deleted IS NULL AND merged_into IS NULL
$$;

-- create {class, label}: a label that a live class holds merges into it.
CREATE FUNCTION tledge_do_create(p_seq bigint, p_device uuid, p jsonb) RETURNS jsonb
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE c uuid := (p->>'class')::uuid; l text := p->>'label'; live uuid;
BEGIN
    IF EXISTS (SELECT 1 FROM classes WHERE uuid = c) THEN RETURN '[]'; END IF;
    live := tledge_live_label(l);
    IF live IS NOT NULL THEN
        INSERT INTO classes(uuid, label, created_seq, device, merged_into)
            VALUES (c, l, p_seq, p_device, live);
        RETURN jsonb_build_array(jsonb_build_object('op', 'merge', 'from', c, 'into', live,
                                                    'label', l, 'rejected', '[]'::jsonb));
    END IF;
    INSERT INTO classes(uuid, label, created_seq, device) VALUES (c, l, p_seq, p_device);
    RETURN jsonb_build_array(jsonb_build_object('op', 'create', 'class', c, 'label', l));
END $$;

-- add {class, sample, digest} + crop + (fingerprint, vector): rejected when the class is
-- deleted (the delete wins) or already holds the same content.
CREATE FUNCTION tledge_do_add(p_device uuid, p jsonb, p_crop bytea, p_fp text, p_vec bytea)
RETURNS jsonb LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE s uuid := (p->>'sample')::uuid; d text := p->>'digest'; c uuid; why text; l text;
BEGIN
    IF EXISTS (SELECT 1 FROM samples WHERE uuid = s) THEN RETURN '[]'; END IF;
    c := tledge_resolve((p->>'class')::uuid);
    IF c IS NULL THEN
        RETURN jsonb_build_array(jsonb_build_object('op', 'reject', 'sample', s,
                                                    'reason', 'unknown class'));
    END IF;
    SELECT CASE WHEN deleted IS NOT NULL THEN 'class deleted' END, label INTO why, l
        FROM classes WHERE uuid = c;
    IF why IS NULL AND EXISTS (SELECT 1 FROM samples WHERE class_uuid = c AND state = 'live'
                               AND digest = d) THEN
        why := 'duplicate';
    END IF;
    IF why IS NOT NULL THEN
        INSERT INTO samples(uuid, class_uuid, digest, device, state, reason)
            VALUES (s, c, d, p_device, 'rejected', why);
        RETURN jsonb_build_array(jsonb_build_object('op', 'reject', 'sample', s, 'reason', why));
    END IF;
    INSERT INTO samples(uuid, class_uuid, digest, crop, device) VALUES (s, c, d, p_crop, p_device);
    IF p_vec IS NOT NULL THEN
        INSERT INTO embeddings(sample_uuid, fingerprint, vector, device)
            VALUES (s, p_fp, p_vec, p_device) ON CONFLICT DO NOTHING;
    END IF;
    RETURN jsonb_build_array(jsonb_build_object('op', 'add', 'class', c, 'label', l,
                                                'sample', s, 'digest', d));
END $$;

-- rename {class, label}: last in hub order wins; onto a label another live class holds, the
-- two classes merge into the older one.
CREATE FUNCTION tledge_do_rename(p jsonb) RETURNS jsonb
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE c uuid := tledge_resolve((p->>'class')::uuid); l text := p->>'label'; other uuid;
        c_seq bigint; o_seq bigint;
BEGIN
    IF c IS NULL OR EXISTS (SELECT 1 FROM classes WHERE uuid = c AND deleted IS NOT NULL) THEN
        RETURN '[]';
    END IF;
    other := tledge_live_label(l);
    IF other IS NULL OR other = c THEN
        UPDATE classes SET label = l WHERE uuid = c;
        RETURN jsonb_build_array(jsonb_build_object('op', 'rename', 'class', c, 'label', l));
    END IF;
    SELECT created_seq INTO c_seq FROM classes WHERE uuid = c;
    SELECT created_seq INTO o_seq FROM classes WHERE uuid = other;
    IF c_seq < o_seq THEN
        RETURN tledge_merge(other, c, l);
    END IF;
    RETURN tledge_merge(c, other, l);
END $$;

-- delete {class}: tombstones the class and its samples.
CREATE FUNCTION tledge_do_delete(p jsonb) RETURNS jsonb
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE c uuid := tledge_resolve((p->>'class')::uuid);
BEGIN
    IF c IS NULL OR EXISTS (SELECT 1 FROM classes WHERE uuid = c AND deleted IS NOT NULL) THEN
        RETURN '[]';
    END IF;
    UPDATE classes SET deleted = now() WHERE uuid = c;
    UPDATE samples SET state = 'deleted', reason = 'class deleted'
        WHERE class_uuid = c AND state = 'live';
    RETURN jsonb_build_array(jsonb_build_object('op', 'delete', 'class', c));
END $$;

-- remove {sample}: one sample deleted.
CREATE FUNCTION tledge_do_remove(p jsonb) RETURNS jsonb
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE s uuid := (p->>'sample')::uuid;
BEGIN
    UPDATE samples SET state = 'deleted', reason = 'removed' WHERE uuid = s AND state = 'live';
    IF NOT FOUND THEN RETURN '[]'; END IF;
    RETURN jsonb_build_array(jsonb_build_object('op', 'remove', 'sample', s));
END $$;

-- The one way changes enter the hub. Exactly once per change_id; returns its seq.
CREATE FUNCTION tledge_push(p_change uuid, p_device uuid, p_base bigint, p_kind text,
                            p_payload jsonb, p_crop bytea, p_fp text, p_vec bytea)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE v_seq bigint; effects jsonb;
BEGIN
    PERFORM pg_advisory_xact_lock(7137001);
    SELECT seq INTO v_seq FROM changes WHERE change_id = p_change;
    IF FOUND THEN RETURN v_seq; END IF;
    IF NOT EXISTS (SELECT 1 FROM devices WHERE id = p_device AND
                   (role = session_user OR pg_has_role(session_user, role, 'MEMBER'))) THEN
        RAISE EXCEPTION 'device % is not registered to role %', p_device, session_user;
    END IF;
    v_seq := nextval(pg_get_serial_sequence('changes', 'seq'));
    effects := CASE p_kind
        WHEN 'create' THEN tledge_do_create(v_seq, p_device, p_payload)
        WHEN 'add' THEN tledge_do_add(p_device, p_payload, p_crop, p_fp, p_vec)
        WHEN 'rename' THEN tledge_do_rename(p_payload)
        WHEN 'delete' THEN tledge_do_delete(p_payload)
        WHEN 'remove' THEN tledge_do_remove(p_payload)
    END;
    IF effects IS NULL THEN
        RAISE EXCEPTION 'unknown change kind %', p_kind;
    END IF;
    INSERT INTO changes(seq, change_id, device, base_seq, kind, payload)
        VALUES (v_seq, p_change, p_device, p_base, p_kind,
                jsonb_build_object('request', p_payload, 'effects', effects));
    PERFORM pg_notify('tledge_changes', v_seq::text);
    RETURN v_seq;
END $$;

-- A device registers itself and reports progress; it can only touch its own row.
CREATE FUNCTION tledge_device_seen(p_id uuid, p_name text, p_fp text, p_applied bigint,
                                   p_pending integer) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO devices(id, name, role, fingerprint, last_seen, last_applied_seq, pending)
        VALUES (p_id, p_name, session_user, p_fp, now(), p_applied, p_pending)
    ON CONFLICT (id) DO UPDATE SET name = excluded.name, fingerprint = excluded.fingerprint,
        last_seen = now(), last_applied_seq = excluded.last_applied_seq,
        pending = excluded.pending
        WHERE devices.role = session_user OR pg_has_role(session_user, devices.role, 'MEMBER');
    IF NOT FOUND THEN
        RAISE EXCEPTION 'device % belongs to another role than %', p_id, session_user;
    END IF;
END $$;

-- Devices upload embeddings they computed for samples others enrolled.
CREATE FUNCTION tledge_put_embedding(p_sample uuid, p_fp text, p_vec bytea, p_device uuid)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    INSERT INTO embeddings(sample_uuid, fingerprint, vector, device)
    SELECT p_sample, p_fp, p_vec, p_device WHERE EXISTS (SELECT 1 FROM samples WHERE uuid = p_sample)
    ON CONFLICT DO NOTHING
$$;

-- Functions are executable by PUBLIC by default; only roles granted them (see
-- `tledge hub grant-device`) may register devices or push changes.
REVOKE EXECUTE ON FUNCTION
    tledge_push(uuid, uuid, bigint, text, jsonb, bytea, text, bytea),
    tledge_device_seen(uuid, text, text, bigint, integer),
    tledge_put_embedding(uuid, text, bytea, uuid) FROM PUBLIC;
