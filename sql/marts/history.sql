-- Tables the pipeline appends to, one snapshot per as-of day: the history analysts
-- query. Each run for a day replaces that day's rows, so a rerun never doubles them.

create table if not exists package_metrics_daily (
    as_of              date not null,
    package            varchar using compression uncompressed not null,
    weekly_downloads   bigint not null,
    monthly_downloads  bigint not null,
    dependents         bigint not null,
    dev_dependents     bigint not null,
    peer_dependents    bigint not null,
    rank_by_dependents bigint not null,
    rank_by_downloads  bigint not null
);

create table if not exists metrics_runs (
    as_of                  date primary key,
    computed_at            timestamp not null,
    packages               bigint not null,
    missing_days           date[] not null,  -- days of the 30-day window with no data
    weekly_window_complete boolean not null,
    self_dependencies      bigint not null,
    unknown_dependencies   bigint not null,
    unknown_packages       bigint not null,
    seconds                double not null
);

-- The windows the day's metrics were computed with (rollout.metrics): a plan whose
-- weekly window is another has its weekly sums summed again from the downloads
-- (cohort_qualified_packages). Null on a row computed before they were recorded.
alter table metrics_runs add column if not exists weekly_window_days integer;
alter table metrics_runs add column if not exists monthly_window_days integer;

-- Cohort packages as of each day (sticky: everything that ever qualified and was not
-- released), with why it first qualified and whether it still qualifies that day.
create table if not exists cohort_package_snapshots (
    as_of              date not null,
    cohort             varchar not null,
    package            varchar using compression uncompressed not null,
    first_qualified_on date not null,
    reasons            varchar[] not null,
    qualifies_today    boolean not null
);

-- Cohort accounts as of each day, with 2FA status and the packages that put them there.
create table if not exists cohort_account_snapshots (
    as_of              date not null,
    cohort             varchar not null,
    account_id         bigint not null,
    username           varchar not null,
    tfa_status         varchar not null,   -- none | totp | webauthn
    tfa_methods        varchar[] not null,
    last_login_at      timestamp,
    first_qualified_on date not null,
    packages           varchar[] not null,
    via                varchar[] not null  -- maintainer, or team org/name
);

-- Each cohort build of a day, whatever it wrote: a cohort whose packages were all
-- released and none qualify any more writes no snapshot row, and its latest day is that
-- build's, empty, not the build before's (cohort_latest_builds).
create table if not exists cohort_builds (
    as_of    date not null,
    cohort   varchar not null,
    built_at timestamp not null,
    primary key (as_of, cohort)
);

-- Which download windows rollout.metrics keeps (in `download_windows`, which it
-- writes: package, weekly_downloads, monthly_downloads, the packages with a non-zero
-- sum) so the next day's are updated by what changed (int_download_windows_step)
-- instead of summed again over the whole window: the day and window lengths they are
-- for, and the last ingested file they count. No row: the next run sums them whole.
create table if not exists download_windows_state (
    as_of           date not null,
    weekly_days     integer not null,
    monthly_days    integer not null,
    counted_file_id bigint not null
);

-- Which dependency counts rollout.metrics keeps (in `dependency_counts`, which it
-- writes: the int_dependency_counts model's rows with edges) so a day without new
-- manifests reuses them and a day with some moves them by the packages whose latest
-- manifest changed (int_dependency_counts_step): the last ingested file they count,
-- and what they leave out of the metrics (int_dependency_exclusions, moved with them by
-- int_dependency_exclusions_step). No row: the next run counts them whole.
create table if not exists dependency_counts_state (
    counted_file_id bigint not null
);
alter table dependency_counts_state add column if not exists self_dependencies bigint;
alter table dependency_counts_state add column if not exists unknown_dependencies bigint;
alter table dependency_counts_state add column if not exists unknown_packages bigint;

-- Which latest manifests rollout.warehouse.manifests keeps (in `latest_manifests`,
-- which it writes: stg_manifests' rows) so the metrics and cohort runs do not rank
-- every manifest ever loaded again each day (4M at npm scale), though the latest change
-- only when a manifests file comes: the last ingested file they count. No row: the next
-- run makes them whole.
create table if not exists latest_manifests_state (
    counted_file_id bigint not null
);

-- Which delivery events the registry's notifications have (rollout.notify.delivery
-- writes each touched notification's state, int_notification_delivery, then this): the
-- last ingested file applied, to the registry instance (registry_changes.instance) named.
-- No row, or another registry: the next run applies them all.
create table if not exists delivery_state (
    applied_file_id bigint not null,
    instance varchar
);
alter table delivery_state add column if not exists instance varchar;
-- And the state last written to the registry, as read back (written_id: the notification,
-- written: its state): a registry restored from a backup made before that write holds
-- another, and the next run applies them all (what the restore took back is not known).
-- NULL: nothing written yet, or before these were kept; not checked.
alter table delivery_state add column if not exists written_id bigint;
alter table delivery_state add column if not exists written varchar;
