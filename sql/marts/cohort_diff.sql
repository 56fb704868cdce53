-- Accounts that entered or left each cohort between $d1 and $d2 (snapshots), with
-- the packages that put them in (entered) or had put them in (left).
with

snapshots as (
    select * from cohort_account_snapshots
    where ($cohort is null or cohort = $cohort)
),

before as (
    select * from snapshots where as_of = $d1
),

after as (
    select * from snapshots where as_of = $d2
),

entered as (
    select 'entered' as change, after.cohort, after.username, after.tfa_status, after.packages
    from after
    anti join before using (cohort, account_id)
),

left_cohort as (
    select 'left' as change, before.cohort, before.username, before.tfa_status, before.packages
    from before
    anti join after using (cohort, account_id)
),

final as (
    select * from entered
    union all
    select * from left_cohort
)

select * from final
order by cohort, change, username
