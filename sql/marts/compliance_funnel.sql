-- Each plan phase from notice to enforcement: who was asked, who enrolled how soon,
-- who was enforced, and who is still without 2FA on $as_of. The funnel's stages
-- (int_funnel_accounts) each count a subset of the one before; the columns after them
-- count the phase's whole effect, whatever the account's cohort.
with

phases as (
    select phase, cohort, notice_on, enforce_on, step from plan_phases
),

-- Each stay of an account in a cohort (a temp table made once by build_adoption from
-- the intermediate model).
memberships as (
    select * from int_memberships_known
),

-- The factors each phase counts (a security key only for a phishing_resistant phase).
-- Active on day D when active_from <= D < active_until (null: still active).
phase_factors as (
    select * from ({{ int_phase_factors }})
),

-- The cohort at each notice, who was without 2FA then and when they enrolled (a temp
-- table made once by build_adoption from the intermediate model).
notice_enrolments as (
    select * from int_notice_enrolments
),

funnel_accounts as (
    select * from ({{ int_funnel_accounts }})
),

requirements as (
    select * from ({{ int_phase_requirements_known }})
),

-- What the phase revoked: web sessions and tokens, one audit row each (a rollback
-- restores neither).
revocations as (
    select
        phase,
        count(*) filter (where action = 'revoke_session') as sessions_revoked,
        count(*) filter (where action = 'revoke_token') as tokens_revoked
    from registry.actions
    where action in ('revoke_session', 'revoke_token')
        and created_at < $as_of::date + 1
    group by phase
),

-- The runs that applied or rolled back a phase (rollout.enforce's plan_runs steps): an
-- apply whatever its outcome (one stopped, killed or failed half way required accounts
-- all the same; one not finished counts from its start), a rollback once it succeeded.
phase_runs as (
    select step, mode, coalesce(finished_at, started_at) as at, seq
    from registry.plan_runs
    where (mode = 'apply' or (mode = 'rollback' and state = 'succeeded'))
        and coalesce(finished_at, started_at) < $as_of::date + 1
),

-- The phase's last such run decides: rolled back until it is applied again. Last by
-- finish, then in the order the runs were recorded (seq): an apply and its rollback can
-- finish at the same instant (the demo's simulated clock, a coarse one).
rollbacks as (
    select phases.phase, max(phase_runs.at) as rolled_back_at
    from phases
    inner join phase_runs on phase_runs.step = phases.step
    group by phases.phase
    having arg_max(phase_runs.mode, (phase_runs.at, phase_runs.seq)) = 'rollback'
),

enrolments as (
    select phase, account_id, enrolled_at
    from notice_enrolments
    where enrolled_at is not null
),

-- "Within N days after notice_on": before notice_on + N days, 00:00 UTC. Counted here
-- whatever $as_of; final leaves out a span not over by $as_of.
enrolment_counts as (
    select
        enrolments.phase,
        count(*) filter (where enrolments.enrolled_at < phases.notice_on + 7) as enrolled_7d,
        count(*) filter (where enrolments.enrolled_at < phases.notice_on + 14) as enrolled_14d,
        count(*) filter (where enrolments.enrolled_at < phases.notice_on + 30) as enrolled_30d
    from enrolments
    inner join phases using (phase)
    group by enrolments.phase
),

funnel_counts as (
    select
        phase,
        count(*) as accounts,
        count(*) filter (where without_2fa_at_notice) as without_2fa_at_notice,
        count(*) filter (where notified) as notified,
        -- Each account judged at its own day of enforcement (int_funnel_accounts): under
        -- per-account deadlines its own deadline, once that has come.
        count(*) filter (where enrolled_by_enforcement) as enrolled_by_enforcement,
        count(*) filter (where without_2fa_at_enforcement) as without_2fa_at_enforcement,
        count(*) filter (where enforced) as enforced,
        count(*) filter (where enrolled_after_enforcement) as enrolled_after_enforcement
    from funnel_accounts
    group by phase
),

required_counts as (
    select phase, count(*) as required
    from requirements
    group by phase
),

with_2fa_now as (
    select distinct phase, account_id from phase_factors where active_until is null
),

-- Sent the phase's notice by the end of $as_of: under per-account deadlines, what
-- starts an account's deadline (one never sent it is never enforced).
noticed as (
    select * from ({{ int_notices_sent }})
),

still_without as (
    select
        phases.phase,
        count(*) as still_without,
        count(*) filter (where noticed.account_id is null) as never_noticed
    from phases
    inner join memberships
        on memberships.cohort = phases.cohort
        and memberships.left_on is null
    left join noticed
        on noticed.phase = phases.phase
        and noticed.account_id = memberships.account_id
    anti join with_2fa_now
        on with_2fa_now.phase = phases.phase
        and with_2fa_now.account_id = memberships.account_id
    group by phases.phase
),

final as (
    select
        phases.phase,
        phases.cohort,
        phases.notice_on,
        phases.enforce_on,
        coalesce(funnel_counts.accounts, 0) as accounts,
        coalesce(funnel_counts.without_2fa_at_notice, 0) as without_2fa_at_notice,
        coalesce(funnel_counts.notified, 0) as notified,
        -- A span is over once the day it ends at the start of is $as_of or earlier (as
        -- "at enforcement" counts once enforce_on is): until then null, not the count so
        -- far, which would read as the whole span's (a report of its day may be written
        -- while the day runs).
        case
            when phases.notice_on + 7 <= $as_of::date
                then coalesce(enrolment_counts.enrolled_7d, 0)
        end as enrolled_7d,
        case
            when phases.notice_on + 14 <= $as_of::date
                then coalesce(enrolment_counts.enrolled_14d, 0)
        end as enrolled_14d,
        case
            when phases.notice_on + 30 <= $as_of::date
                then coalesce(enrolment_counts.enrolled_30d, 0)
        end as enrolled_30d,
        -- enforce_on is the first day of enforcement (under per-account deadlines the
        -- first own deadline possible): before it no account's span is over.
        case
            when phases.enforce_on <= $as_of::date
                then coalesce(funnel_counts.enrolled_by_enforcement, 0)
        end as enrolled_by_enforcement,
        coalesce(funnel_counts.without_2fa_at_enforcement, 0) as without_2fa_at_enforcement,
        coalesce(funnel_counts.enforced, 0) as enforced,
        coalesce(revocations.sessions_revoked, 0) as sessions_revoked,
        coalesce(revocations.tokens_revoked, 0) as tokens_revoked,
        coalesce(funnel_counts.enrolled_after_enforcement, 0) as enrolled_after_enforcement,
        coalesce(still_without.still_without, 0) as still_without,
        coalesce(still_without.never_noticed, 0) as never_noticed,
        coalesce(required_counts.required, 0) as required,
        rollbacks.rolled_back_at
    from phases
    left join funnel_counts using (phase)
    left join enrolment_counts using (phase)
    left join revocations using (phase)
    left join still_without using (phase)
    left join required_counts using (phase)
    left join rollbacks using (phase)
    order by phases.notice_on, phases.phase
)

select * from final
