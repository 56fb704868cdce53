-- Documented views for analysts (docs/warehouse.md): the latest figures and the
-- history behind them.

-- A day computed with gaps in its download windows (a day past the data, a daily file
-- not landed) holds zeros where the data is missing: each row says whether its weekly
-- and monthly sums are over complete windows (metrics_runs), so zeros from a gap do not
-- read as packages nobody downloaded.
create or replace view package_metrics as
select metrics.*,
    runs.weekly_window_complete,
    len(runs.missing_days) = 0 as monthly_window_complete
from package_metrics_daily as metrics
left join metrics_runs as runs using (as_of)
where metrics.as_of = (select max(as_of) from package_metrics_daily);

create or replace view cohort_membership_history as
select as_of, cohort, account_id, username, tfa_status, first_qualified_on, packages, via
from cohort_account_snapshots;

-- Each cohort's latest build: the latest day a build recorded (cohort_builds), or either
-- of its snapshots holds (a warehouse built before builds were recorded). A build whose
-- cohort had packages but no account writes no account row, and one whose packages were
-- all released writes none at all: its latest accounts and packages are none, not the
-- build before's. (The two views below and rollout.cohorts.latest_build read it.)
create or replace view cohort_latest_builds as
select cohort, max(as_of) as as_of
from (
    select cohort, as_of from cohort_builds
    union all
    select cohort, as_of from cohort_package_snapshots
    union all
    select cohort, as_of from cohort_account_snapshots
)
group by cohort;

create or replace view cohort_accounts as
select snapshots.*
from cohort_account_snapshots as snapshots
inner join cohort_latest_builds using (cohort, as_of);

create or replace view cohort_packages as
select snapshots.*
from cohort_package_snapshots as snapshots
inner join cohort_latest_builds using (cohort, as_of);

comment on view package_metrics is
    'Reach of every package on the latest computed day: weekly/30-day downloads, '
    'dependents by kind, ranks, and whether the download windows were complete (false: '
    'days with no download data counted as zeros, listed in metrics_runs.missing_days). '
    'History: package_metrics_daily.';
comment on view cohort_membership_history is
    'Every cohort account on every built day, with 2FA status and the packages that '
    'put it in the cohort.';
comment on view cohort_accounts is
    'The accounts of each cohort on its latest built day, with 2FA status, methods, '
    'last login and the packages (and routes: maintainer or team) behind it.';
comment on view cohort_packages is
    'The packages of each cohort on its latest built day: when they first qualified, '
    'why, and whether they still qualify (cohorts are sticky).';
comment on view cohort_latest_builds is
    'The latest built day (as_of) of each cohort, what cohort_accounts and '
    'cohort_packages show: a build that put nobody in a cohort is still its latest day.';
