-- Documented views for analysts (docs/warehouse.md): the latest figures and the
-- history behind them.

create or replace view package_metrics as
select * from package_metrics_daily
where as_of = (select max(as_of) from package_metrics_daily);

create or replace view cohort_membership_history as
select as_of, cohort, account_id, username, tfa_status, first_qualified_on, packages, via
from cohort_account_snapshots;

create or replace view cohort_accounts as
select snapshots.*
from cohort_account_snapshots as snapshots
inner join (
    select cohort, max(as_of) as as_of from cohort_account_snapshots group by cohort
) as latest using (cohort, as_of);

create or replace view cohort_packages as
select snapshots.*
from cohort_package_snapshots as snapshots
inner join (
    select cohort, max(as_of) as as_of from cohort_package_snapshots group by cohort
) as latest using (cohort, as_of);
