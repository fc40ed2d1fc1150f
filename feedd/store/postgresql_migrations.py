"""The PostgreSQL schema, as numbered migrations applied in order at start (tracked in `feedd_schema`).

The same tables and columns as SQLite's, at the same version numbers, so that a change to the schema is one
numbered step in both. Where SQLite has a rowid, the tables that are read in the order rows went in carry a
`seq` identity column instead; timestamps are `timestamptz` and JSON stays text (as written: jsonb would
reorder a mapping's keys).
"""

from __future__ import annotations

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, """
    CREATE TABLE runs (
        run_id          TEXT PRIMARY KEY,
        pipeline        TEXT,
        connection      TEXT NOT NULL,
        direction       TEXT NOT NULL,
        status          TEXT NOT NULL,
        source_kind     TEXT NOT NULL,
        source_name     TEXT NOT NULL,
        source_size     BIGINT NOT NULL,
        source_sha256   TEXT NOT NULL,
        spool_path      TEXT NOT NULL,
        rows            BIGINT NOT NULL DEFAULT 0,
        valid           BIGINT NOT NULL DEFAULT 0,
        invalid         BIGINT NOT NULL DEFAULT 0,
        mapping         TEXT NOT NULL DEFAULT '{}',
        errors          TEXT NOT NULL DEFAULT '[]',
        error_code      TEXT,
        error_message   TEXT,
        duplicate_of    TEXT,
        meta            TEXT NOT NULL DEFAULT '{}',
        created_at      TIMESTAMPTZ NOT NULL,
        started_at      TIMESTAMPTZ,
        finished_at     TIMESTAMPTZ,
        acknowledged_at TIMESTAMPTZ
    );
    CREATE INDEX runs_by_status ON runs (status, run_id);
    CREATE INDEX runs_by_connection ON runs (connection, run_id);
    CREATE INDEX runs_by_content ON runs (connection, source_sha256);

    CREATE TABLE deliveries (
        seq             BIGINT GENERATED ALWAYS AS IDENTITY,
        run_id          TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        destination     TEXT NOT NULL,
        status          TEXT NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        last_error      TEXT,
        delivered_at    TIMESTAMPTZ,
        next_attempt_at TIMESTAMPTZ,
        PRIMARY KEY (run_id, destination)
    );
    CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);

    CREATE TABLE uploads (
        upload_id   TEXT PRIMARY KEY,
        kind        TEXT NOT NULL,
        state       TEXT NOT NULL,
        connection  TEXT NOT NULL,
        pipeline    TEXT NOT NULL,
        total_parts INTEGER NOT NULL DEFAULT 0,
        parts       TEXT NOT NULL DEFAULT '{}',
        records     BIGINT NOT NULL DEFAULT 0,
        "offset"    BIGINT NOT NULL DEFAULT 0,
        length      BIGINT,
        filename    TEXT,
        run_id      TEXT,
        meta        TEXT NOT NULL DEFAULT '{}',
        created_at  TIMESTAMPTZ NOT NULL,
        updated_at  TIMESTAMPTZ NOT NULL,
        expires_at  TIMESTAMPTZ
    );
    CREATE INDEX uploads_by_state ON uploads (state, updated_at);

    CREATE TABLE mapping_memory (
        connection  TEXT NOT NULL,
        header_key  TEXT NOT NULL,
        mapping     TEXT NOT NULL,
        updated_at  TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (connection, header_key)
    );

    CREATE TABLE pipeline_overrides (
        pipeline    TEXT PRIMARY KEY,
        active      BOOLEAN NOT NULL,
        updated_at  TIMESTAMPTZ NOT NULL
    );
    """),
    (2, """
    CREATE TABLE events (
        seq             BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
        event_id        TEXT NOT NULL,
        url             TEXT NOT NULL,
        type            TEXT NOT NULL,
        body            TEXT NOT NULL,
        status          TEXT NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        last_error      TEXT,
        next_attempt_at TIMESTAMPTZ,
        created_at      TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (event_id, url)
    );
    CREATE INDEX events_due ON events (status, next_attempt_at);
    """),
    (3, """
    CREATE TABLE disabled_targets (
        target      TEXT PRIMARY KEY,
        reason      TEXT NOT NULL,
        disabled_at TIMESTAMPTZ NOT NULL
    );
    """),
    (4, """
    CREATE INDEX runs_queued ON runs (connection, run_id) WHERE status = 'queued';
    """),
    (5, """
    CREATE TABLE managed_objects (
        seq         BIGINT GENERATED ALWAYS AS IDENTITY,
        kind        TEXT NOT NULL,
        name        TEXT NOT NULL,
        body        TEXT NOT NULL,
        version     INTEGER NOT NULL,
        created_at  TIMESTAMPTZ NOT NULL,
        updated_at  TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (kind, name)
    );

    CREATE TABLE audit (
        seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at          TIMESTAMPTZ NOT NULL,
        actor       TEXT NOT NULL,
        action      TEXT NOT NULL,
        kind        TEXT NOT NULL,
        name        TEXT NOT NULL,
        before      TEXT,
        after       TEXT
    );
    """),
    (6, """
    CREATE TABLE arrivals (
        pipeline        TEXT PRIMARY KEY,
        since           TIMESTAMPTZ NOT NULL,
        checked_until   TIMESTAMPTZ,
        expect          TEXT NOT NULL DEFAULT '',
        updated_at      TIMESTAMPTZ NOT NULL
    );

    CREATE TABLE arrivals_missed (
        pipeline        TEXT NOT NULL,
        expected_by     TIMESTAMPTZ NOT NULL,
        opens           TIMESTAMPTZ NOT NULL,
        deadline        TIMESTAMPTZ NOT NULL,
        last_arrival_at TIMESTAMPTZ,
        reported_at     TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (pipeline, expected_by)
    );

    CREATE INDEX runs_by_pipeline_time ON runs (pipeline, created_at);
    -- The very expression the store's sweep query filters on (postgresql._kept), or the planner cannot
    -- use these partial indexes for it.
    CREATE INDEX runs_input_kept ON runs (pipeline, finished_at) WHERE (meta::jsonb #>> '{swept,input}') IS NULL;
    CREATE INDEX runs_outputs_kept ON runs (pipeline, finished_at)
        WHERE (meta::jsonb #>> '{swept,outputs}') IS NULL;
    """),
    (7, """
    -- Several nodes: who holds each piece of work (NULL: nobody), and the nodes alive.
    ALTER TABLE runs ADD COLUMN owner TEXT;
    ALTER TABLE deliveries ADD COLUMN owner TEXT;
    ALTER TABLE events ADD COLUMN owner TEXT;
    CREATE INDEX runs_by_owner ON runs (owner) WHERE owner IS NOT NULL;
    CREATE INDEX deliveries_by_owner ON deliveries (owner) WHERE owner IS NOT NULL;
    CREATE INDEX events_by_owner ON events (owner) WHERE owner IS NOT NULL;

    CREATE TABLE nodes (
        node_id       TEXT PRIMARY KEY,
        started_at    TIMESTAMPTZ NOT NULL,
        heartbeat_at  TIMESTAMPTZ NOT NULL,
        info          TEXT NOT NULL DEFAULT '{}'
    );

    -- Idle nodes are woken early (they poll as well): by the write itself, so no writer can forget to,
    -- and only once it commits. Runs queued, and deliveries and events pending that nobody holds.
    CREATE FUNCTION feedd_wake() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('feedd', TG_ARGV[0]);
        RETURN NULL;
    END $$;
    CREATE TRIGGER runs_wake AFTER INSERT OR UPDATE ON runs FOR EACH ROW
        WHEN (NEW.status = 'queued') EXECUTE FUNCTION feedd_wake('runs');
    CREATE TRIGGER deliveries_wake AFTER INSERT OR UPDATE ON deliveries FOR EACH ROW
        WHEN (NEW.status = 'pending' AND NEW.owner IS NULL) EXECUTE FUNCTION feedd_wake('deliveries');
    CREATE TRIGGER events_wake AFTER INSERT OR UPDATE ON events FOR EACH ROW
        WHEN (NEW.status = 'pending' AND NEW.owner IS NULL) EXECUTE FUNCTION feedd_wake('events');
    -- an object created, changed or deleted over the API on one node: the others take it in
    CREATE TRIGGER objects_wake AFTER INSERT OR UPDATE OR DELETE ON managed_objects
        FOR EACH STATEMENT EXECUTE FUNCTION feedd_wake('objects');
    """),
    # 8: the console's sessions, shared by every node and kept across restarts; found by the SHA-256 of
    # their token.
    (8, """
    CREATE TABLE console_sessions (
        token_hash      TEXT PRIMARY KEY,
        operator        TEXT NOT NULL,
        role            TEXT NOT NULL,
        password_tag    TEXT NOT NULL,
        created_at      TIMESTAMPTZ NOT NULL,
        expires_at      TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX console_sessions_by_expiry ON console_sessions (expires_at);
    """),
    (9, """
    -- What the nodes of one store share about logins and spaces. `failures` holds the wall-clock times
    -- (epoch seconds, as JSON) of an address's failed logins within the ban window. `seq` is bumped by
    -- every ban and unban (under a lock, so in commit order), so that each node reads only what changed
    -- since it last looked.
    CREATE SEQUENCE bans_seq;
    CREATE TABLE bans (
        ip              TEXT PRIMARY KEY,
        failures        TEXT NOT NULL DEFAULT '[]',
        banned_until    TIMESTAMPTZ,
        seq             BIGINT NOT NULL DEFAULT 0,
        updated_at      TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX bans_by_seq ON bans (seq);

    CREATE TABLE space_use (
        connection      TEXT PRIMARY KEY,
        used            BIGINT NOT NULL
    );
    """),
    (10, """
    -- A multipart upload's parts, one row each: two parts recorded at once (by two nodes) are both kept.
    -- uploads.parts and uploads.records are no longer read: the parts recorded so far move here.
    CREATE TABLE upload_parts (
        upload_id   TEXT NOT NULL REFERENCES uploads (upload_id) ON DELETE CASCADE,
        part_number INTEGER NOT NULL,
        etag        TEXT NOT NULL,
        records     BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (upload_id, part_number)
    );
    INSERT INTO upload_parts
        SELECT u.upload_id, p.key::int, p.value, coalesce((u.meta::json -> 'records' ->> p.key)::bigint, 0)
        FROM uploads u, json_each_text(u.parts::json) p;

    -- Who holds an upload (a tus PATCH in progress) and until when, if it is not let go of before.
    ALTER TABLE uploads ADD COLUMN holder TEXT;
    ALTER TABLE uploads ADD COLUMN held_until TIMESTAMPTZ;

    -- The first run of each content of a connection that is not itself a duplicate: the key makes the
    -- duplicate check one atomic step with the run's insert.
    CREATE TABLE originals (
        connection  TEXT NOT NULL,
        sha256      TEXT NOT NULL,
        run_id      TEXT NOT NULL,
        PRIMARY KEY (connection, sha256)
    );
    INSERT INTO originals
        SELECT connection, source_sha256, min(run_id) FROM runs WHERE duplicate_of IS NULL
        GROUP BY connection, source_sha256;
    """),
)
