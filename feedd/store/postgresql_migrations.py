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
)
