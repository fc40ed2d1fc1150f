"""The SQLite schema, as numbered migrations applied in order at start (tracked in `user_version`)."""

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
        source_size     INTEGER NOT NULL,
        source_sha256   TEXT NOT NULL,
        spool_path      TEXT NOT NULL,
        rows            INTEGER NOT NULL DEFAULT 0,
        valid           INTEGER NOT NULL DEFAULT 0,
        invalid         INTEGER NOT NULL DEFAULT 0,
        mapping         TEXT NOT NULL DEFAULT '{}',
        errors          TEXT NOT NULL DEFAULT '[]',
        error_code      TEXT,
        error_message   TEXT,
        duplicate_of    TEXT,
        meta            TEXT NOT NULL DEFAULT '{}',
        created_at      TEXT NOT NULL,
        started_at      TEXT,
        finished_at     TEXT,
        acknowledged_at TEXT
    );
    CREATE INDEX runs_by_status ON runs (status, run_id);
    CREATE INDEX runs_by_connection ON runs (connection, run_id);
    CREATE INDEX runs_by_content ON runs (connection, source_sha256);

    CREATE TABLE deliveries (
        run_id          TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        destination     TEXT NOT NULL,
        status          TEXT NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        last_error      TEXT,
        delivered_at    TEXT,
        next_attempt_at TEXT,
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
        records     INTEGER NOT NULL DEFAULT 0,
        "offset"    INTEGER NOT NULL DEFAULT 0,
        length      INTEGER,
        filename    TEXT,
        run_id      TEXT,
        meta        TEXT NOT NULL DEFAULT '{}',
        created_at  TEXT NOT NULL,
        updated_at  TEXT NOT NULL,
        expires_at  TEXT
    );
    CREATE INDEX uploads_by_state ON uploads (state, updated_at);

    CREATE TABLE mapping_memory (
        connection  TEXT NOT NULL,
        header_key  TEXT NOT NULL,
        mapping     TEXT NOT NULL,
        updated_at  TEXT NOT NULL,
        PRIMARY KEY (connection, header_key)
    );

    CREATE TABLE pipeline_overrides (
        pipeline    TEXT PRIMARY KEY,
        active      INTEGER NOT NULL,
        updated_at  TEXT NOT NULL
    );
    """),
    (2, """
    CREATE TABLE events (
        event_id        TEXT NOT NULL,
        url             TEXT NOT NULL,
        type            TEXT NOT NULL,
        body            TEXT NOT NULL,
        status          TEXT NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        last_error      TEXT,
        next_attempt_at TEXT,
        created_at      TEXT NOT NULL,
        PRIMARY KEY (event_id, url)
    );
    CREATE INDEX events_due ON events (status, next_attempt_at);
    """),
    (3, """
    CREATE TABLE disabled_targets (
        target      TEXT PRIMARY KEY,
        reason      TEXT NOT NULL,
        disabled_at TEXT NOT NULL
    );
    """),
    (4, """
    CREATE INDEX runs_queued ON runs (connection, run_id) WHERE status = 'queued';
    """),
    (5, """
    CREATE TABLE managed_objects (
        kind        TEXT NOT NULL,
        name        TEXT NOT NULL,
        body        TEXT NOT NULL,
        version     INTEGER NOT NULL,
        created_at  TEXT NOT NULL,
        updated_at  TEXT NOT NULL,
        PRIMARY KEY (kind, name)
    );

    CREATE TABLE audit (
        at          TEXT NOT NULL,
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
        since           TEXT NOT NULL,
        checked_until   TEXT,
        expect          TEXT NOT NULL DEFAULT '',
        updated_at      TEXT NOT NULL
    );

    CREATE TABLE arrivals_missed (
        pipeline        TEXT NOT NULL,
        expected_by     TEXT NOT NULL,
        opens           TEXT NOT NULL,
        deadline        TEXT NOT NULL,
        last_arrival_at TEXT,
        reported_at     TEXT NOT NULL,
        PRIMARY KEY (pipeline, expected_by)
    );

    CREATE INDEX runs_by_pipeline_time ON runs (pipeline, created_at);
    CREATE INDEX runs_input_kept ON runs (pipeline, finished_at) WHERE json_extract(meta, '$.swept.input') IS NULL;
    CREATE INDEX runs_outputs_kept ON runs (pipeline, finished_at)
        WHERE json_extract(meta, '$.swept.outputs') IS NULL;
    """),
    (9, """
    -- What the nodes of one store share about logins and spaces. `failures` holds the wall-clock times
    -- (epoch seconds, as JSON) of an address's failed logins within the ban window. `seq` is bumped by
    -- every ban and unban, so that each node reads only what changed since it last looked.
    CREATE TABLE bans (
        ip              TEXT PRIMARY KEY,
        failures        TEXT NOT NULL DEFAULT '[]',
        banned_until    TEXT,
        seq             INTEGER NOT NULL DEFAULT 0,
        updated_at      TEXT NOT NULL
    );
    CREATE INDEX bans_by_seq ON bans (seq);

    CREATE TABLE space_use (
        connection      TEXT PRIMARY KEY,
        used            INTEGER NOT NULL
    );
    """),
)
