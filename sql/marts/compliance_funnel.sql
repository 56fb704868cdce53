-- Each plan phase from notice to enforcement: who was asked, who enrolled how soon,
-- who was enforced, and who is still without 2FA on $as_of.
with

phases as (
    select phase, cohort, notice_on, enforce_on from plan_phases
),

memberships as (
    select * from ({{ int_memberships_known }})
),

-- Active on day D when active_from <= D < active_until (null: still active).
factors as (
    select * from ({{ int_factors_known }})
),

actions as (
    select action, phase, account_id, created_at
    from registry.actions
    where action in ('tfa_required', 'revoke_session')
        and created_at < $as_of::date + 1
),

phase_notices as (
    select phase, account_id
    from registry.notifications
    where email = 'phase_notice'
        and state = 'sent'
        and coalesce(sent_at, updated_at) < $as_of::date + 1
),

-- The cohort at each notice, who was without 2FA then and when they enrolled (a temp
-- table made once by build_adoption from the intermediate model).
notice_enrolments as (
    select * from int_notice_enrolments
),

enrolments as (
    select phase, account_id, enrolled_at
    from notice_enrolments
    where enrolled_at is not null
),

-- "Within N days after notice_on": before notice_on + N days, 00:00 UTC.
enrolment_counts as (
    select
        enrolments.phase,
        count(*) filter (where enrolments.enrolled_at < phases.notice_on + 7) as enrolled_7d,
        count(*) filter (where enrolments.enrolled_at < phases.notice_on + 14) as enrolled_14d,
        count(*) filter (where enrolments.enrolled_at < phases.notice_on + 30) as enrolled_30d,
        count(*) filter (
            where enrolments.enrolled_at < phases.enforce_on
        ) as enrolled_by_enforcement
    from enrolments
    inner join phases using (phase)
    group by enrolments.phase
),

notice_counts as (
    select
        phase,
        count(*) as accounts,
        count(*) filter (where without_2fa_at_notice) as without_2fa_at_notice
    from notice_enrolments
    group by phase
),

notified as (
    select phase, count(distinct account_id) as notified
    from phase_notices
    group by phase
),

-- An account enforced twice (another run) counts from its first tfa_required.
enforced as (
    select phase, account_id, min(created_at) as enforced_at
    from actions
    where action = 'tfa_required'
    group by phase, account_id
),

enforcement_counts as (
    select
        enforced.phase,
        count(*) as enforced,
        count(*) filter (
            where exists (
                select 1 from factors
                where factors.account_id = enforced.account_id
                    and factors.created_at > enforced.enforced_at
            )
        ) as enrolled_after_enforcement
    from enforced
    group by enforced.phase
),

revocations as (
    select phase, count(*) as sessions_revoked
    from actions
    where action = 'revoke_session'
    group by phase
),

with_2fa_now as (
    select distinct account_id from factors where active_until is null
),

still_without as (
    select phases.phase, count(*) as still_without
    from phases
    inner join memberships
        on memberships.cohort = phases.cohort
        and memberships.left_on is null
    anti join with_2fa_now using (account_id)
    group by phases.phase
),

final as (
    select
        phases.phase,
        phases.cohort,
        phases.notice_on,
        phases.enforce_on,
        coalesce(notice_counts.accounts, 0) as accounts,
        coalesce(notice_counts.without_2fa_at_notice, 0) as without_2fa_at_notice,
        coalesce(notified.notified, 0) as notified,
        coalesce(enrolment_counts.enrolled_7d, 0) as enrolled_7d,
        coalesce(enrolment_counts.enrolled_14d, 0) as enrolled_14d,
        coalesce(enrolment_counts.enrolled_30d, 0) as enrolled_30d,
        coalesce(enrolment_counts.enrolled_by_enforcement, 0) as enrolled_by_enforcement,
        coalesce(enforcement_counts.enforced, 0) as enforced,
        coalesce(revocations.sessions_revoked, 0) as sessions_revoked,
        coalesce(enforcement_counts.enrolled_after_enforcement, 0)
            as enrolled_after_enforcement,
        coalesce(still_without.still_without, 0) as still_without
    from phases
    left join notice_counts using (phase)
    left join notified using (phase)
    left join enrolment_counts using (phase)
    left join enforcement_counts using (phase)
    left join revocations using (phase)
    left join still_without using (phase)
    order by phases.notice_on, phases.phase
)

select * from final
