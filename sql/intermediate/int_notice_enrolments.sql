-- Each plan phase's cohort accounts at its notice: whether they were without 2FA at
-- the start of notice_on, and when those first enrolled after it. A temp table during
-- build_adoption, read by compliance_funnel and time_to_comply.
with

phases as (
    select phase, cohort, notice_on from plan_phases
),

-- Each stay of an account in a cohort (a temp table made once by build_adoption from
-- the intermediate model).
memberships as (
    select * from int_memberships_known
),

-- The factors each phase counts (a security key for a phishing_resistant one).
factors as (
    select * from ({{ int_phase_factors }})
),

cohort_at_notice as (
    select phases.phase, memberships.account_id
    from phases
    inner join memberships
        on memberships.cohort = phases.cohort
        and memberships.first_qualified_on <= phases.notice_on
        and (memberships.left_on is null or memberships.left_on > phases.notice_on)
),

-- "At notice" is the start of notice_on, before the notices go out: 2FA on the day
-- before. Whoever enrols on the notice day itself enrolled 0 days after the notice.
-- "2FA" is a factor the phase counts (int_phase_factors).
with_2fa_at_notice as (
    select distinct cohort_at_notice.phase, cohort_at_notice.account_id
    from cohort_at_notice
    inner join phases using (phase)
    inner join factors using (phase, account_id)
    where factors.active_from < phases.notice_on
        and (factors.active_until is null or factors.active_until >= phases.notice_on)
),

without_2fa_at_notice as (
    select phase, account_id from cohort_at_notice
    anti join with_2fa_at_notice using (phase, account_id)
),

enrolments as (
    select
        without_2fa_at_notice.phase,
        without_2fa_at_notice.account_id,
        min(factors.created_at) as enrolled_at
    from without_2fa_at_notice
    inner join phases using (phase)
    inner join factors using (phase, account_id)
    where factors.created_at >= phases.notice_on
    group by all
),

final as (
    select
        cohort_at_notice.phase,
        cohort_at_notice.account_id,
        without_2fa_at_notice.account_id is not null as without_2fa_at_notice,
        enrolments.enrolled_at
    from cohort_at_notice
    left join without_2fa_at_notice using (phase, account_id)
    left join enrolments using (phase, account_id)
)

select * from final
