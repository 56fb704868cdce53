-- Raw tables: landing files as loaded, one row per valid input row, tagged with the
-- file it came from. Everything downstream (sql/staging ...) reads these.

create sequence if not exists ingested_file_ids start 1;

create table if not exists ingested_files (
    file_id       bigint primary key,
    kind          varchar not null,      -- downloads | manifests | logins | publishes | events
    path          varchar not null,
    sha256        varchar not null unique,
    bytes         bigint not null,
    rows_read     bigint not null,
    rows_loaded   bigint not null,
    rows_duplicate bigint not null,      -- repeats of a row already present, skipped
    rows_quarantined bigint not null,
    loaded_at     timestamp not null
);

-- Big string columns are stored uncompressed: measured at npm scale, compressing
-- them made loading 2.4x slower for 40% less disk, and queries no faster. The
-- warehouse is derived data; load speed is what a daily run waits for.
create table if not exists raw_downloads (
    package   varchar using compression uncompressed not null,
    day       date not null,
    downloads bigint not null,
    file_id   bigint not null
);

create table if not exists raw_manifests (
    name        varchar not null,
    version     varchar not null,
    maintainers varchar[] not null,
    file_id     bigint not null,
    ordinal     bigint not null,     -- the manifest's record number in its file
    -- prod/dev/peer when the manifest lists the package itself in that map
    self_dependency_kinds varchar[] not null
);

-- One row per declared dependency of a manifest, which (file_id, ordinal) names;
-- kind is prod, dev or peer. Integers rather than the package name: at npm scale
-- this table has ~40M rows and the name would be its costliest column to load.
create table if not exists raw_dependencies (
    file_id    bigint not null,
    ordinal    bigint not null,
    dependency varchar using compression uncompressed not null,
    range      varchar using compression uncompressed,
    kind       varchar not null
);

create table if not exists raw_logins (
    occurred_at   timestamp not null,
    username      varchar not null,
    second_factor varchar not null,
    outcome       varchar not null,
    file_id       bigint not null
);

-- Publish events: who published which package, and how they proved it was them.
create table if not exists raw_publishes (
    occurred_at   timestamp not null,
    package       varchar not null,
    username      varchar not null,
    via           varchar not null,
    token_kind    varchar,
    second_factor varchar not null,
    file_id       bigint not null
);

-- SendGrid's delivery events (landing/events/, as `rollout notify events serve` writes
-- them): one row an event, each event once (sg_event_id; SendGrid may post one twice).
-- rollout.notify.delivery gives each notification its state from its events.
-- The near-unique strings are stored uncompressed: loading a million events took
-- twice as long compressing them.
create table if not exists raw_events (
    sg_event_id   varchar using compression uncompressed not null,
    event         varchar not null,      -- processed, delivered, deferred, bounce, dropped, ...
    occurred_at   timestamp not null,    -- SendGrid's timestamp, UTC
    email         varchar using compression uncompressed,  -- NULL: an account event
    outbox_id     bigint,                -- notifications.id from custom_args; NULL: not rollout's mail
    email_name    varchar,
    sg_message_id varchar using compression uncompressed,
    bounce_type   varchar,               -- of a bounce: bounce or blocked
    reason        varchar,               -- of a bounce, drop or deferral (reason, else response)
    file_id       bigint not null
);
-- A warehouse made before account events were taken required an email of every event.
alter table raw_events alter column email drop not null;

-- Kept by ingest as it loads events (sql/raw/keep_sends.sql), so that `rollout doctor`
-- reads a small table instead of grouping millions of events: each send the events
-- name (an outbox row under one message id, int_event_sends), the outbox rows among them
-- under two or more message ids (duplicate_sends reads them), and as of which load.
-- A warehouse made before them is filled from all its events by the first run that
-- writes it (rollout.warehouse.keep_sends).
create table if not exists event_sends (
    outbox_id      bigint not null,
    email          varchar not null,
    email_name     varchar,
    message_id     varchar not null,
    first_event_at timestamp not null
);
create table if not exists duplicate_sends_kept (
    outbox_id     bigint not null,
    email         varchar not null,
    email_name    varchar,
    sends         bigint not null,
    first_sent_at timestamp not null,
    last_sent_at  timestamp not null,
    message_ids   varchar[] not null
);
create table if not exists sends_kept (
    through_file_id bigint,              -- the newest events file merged (NULL: none yet)
    kept_at         timestamp not null   -- when (the load's time, UTC)
);

-- Rows refused by validation, kept with the reason so they can be fixed and re-sent.
create table if not exists quarantine (
    file_id   bigint,
    path      varchar not null,
    kind      varchar not null,
    line      bigint,
    reason    varchar not null,
    record    varchar,
    quarantined_at timestamp not null
);

create schema if not exists registry;

-- Which version of each registry table the copy in registry.* is (SQLite registries
-- count their changes: rollout.registry.changes); a copy whose version is current is
-- not read again. No row: the copy is read whole next time.
create table if not exists registry_extract_versions (
    table_name   varchar primary key,
    instance     varchar not null,
    version      bigint not null,
    rows         bigint not null,
    extracted_at timestamp not null
);
-- And the stamp the registry drew when that version was read (a restored registry's
-- versions go back with its rows; its stamps are others). NULL in a copy recorded
-- before stamps were kept: read again once.
alter table registry_extract_versions add column if not exists stamp varchar;
