-- Each plan phase's cohort accounts at its notice, and which stage of the compliance
-- funnel each reached by the end of $as_of. Every stage is a subset of the one before
-- (a flag is only true where the previous one is), so the funnel's counts narrow.
-- Included ({{ }}) by compliance_funnel.
with

phases as (
    select phase, notice_on, enforce_on, days_after_notice from plan_phases
),

-- The factors each phase counts (a security key for a phishing_resistant one), active
-- on day D when active_from <= D < active_until (null: still active).
factors as (
    select * from ({{ int_phase_factors }})
),

-- The cohort at each notice and who was without 2FA then (a temp table made once by
-- build_adoption from the intermediate model).
notice_enrolments as (
    select * from int_notice_enrolments
),

requirements as (
    select * from ({{ int_phase_requirements_known }})
),

notices_sent as (
    select * from ({{ int_notices_sent }})
),

-- A phase with per-account deadlines enforces each account on its own day: its notice's
-- day + days_after_notice + the days of its snooze granted by $as_of (as
-- own_deadline in the package's deadlines module). Accounts never sent the notice have
-- none.
own_deadlines as (
    select
        notices_sent.phase,
        notices_sent.account_id,
        cast(notices_sent.sent_at as date)
            + cast(phases.days_after_notice + coalesce(snoozes.days, 0) as integer) as due_on
    from notices_sent
    inner join phases using (phase)
    left join registry.deadline_snoozes as snoozes
        on snoozes.phase = notices_sent.phase
        and snoozes.account_id = notices_sent.account_id
        and snoozes.granted_at < $as_of::date + 1
    where phases.days_after_notice is not null
        and notices_sent.sent_at is not null
),

-- Each account's day of enforcement: the phase's enforce_on, or under per-account
-- deadlines its own deadline (none for an account never sent the notice: it is never
-- enforced; a notice sent with no sent_at, which gives no day, falls back on enforce_on).
enforcement_days as (
    select
        notice_enrolments.phase,
        notice_enrolments.account_id,
        case
            when phases.days_after_notice is null then phases.enforce_on
            when notices_sent.account_id is not null
                then coalesce(own_deadlines.due_on, phases.enforce_on)
        end as enforce_on
    from notice_enrolments
    inner join phases using (phase)
    left join notices_sent using (phase, account_id)
    left join own_deadlines using (phase, account_id)
),

-- "At enforcement" reads like "at notice": the start of the account's enforcement day,
-- 2FA on the day before, so enforcement runs on the day meet these accounts.
with_2fa_at_enforcement as (
    select distinct enforcement_days.phase, enforcement_days.account_id
    from enforcement_days
    inner join factors using (phase, account_id)
    where factors.active_from < enforcement_days.enforce_on
        and (
            factors.active_until is null or factors.active_until >= enforcement_days.enforce_on
        )
),

enrolled_after_requirement as (
    select distinct requirements.phase, requirements.account_id
    from requirements
    inner join factors using (phase, account_id)
    where factors.created_at > requirements.required_at
),

notified as (
    select
        notice_enrolments.phase,
        notice_enrolments.account_id,
        notice_enrolments.without_2fa_at_notice,
        notice_enrolments.without_2fa_at_notice
        and notices_sent.account_id is not null as notified
    from notice_enrolments
    left join notices_sent using (phase, account_id)
),

at_enforcement as (
    select
        notified.*,
        enforcement_days.enforce_on,
        -- Of those without 2FA at notice, enrolled before the start of their day of
        -- enforcement, once that day has come (a span not over is not judged yet).
        coalesce(
            notified.without_2fa_at_notice
            and enforcement_days.enforce_on <= $as_of::date
            and notice_enrolments.enrolled_at < enforcement_days.enforce_on,
            false
        ) as enrolled_by_enforcement,
        coalesce(
            notified.notified
            and enforcement_days.enforce_on <= $as_of::date
            and with_2fa_at_enforcement.account_id is null,
            false
        ) as without_2fa_at_enforcement
    from notified
    inner join notice_enrolments using (phase, account_id)
    inner join enforcement_days using (phase, account_id)
    left join with_2fa_at_enforcement using (phase, account_id)
),

enforced as (
    select
        at_enforcement.*,
        at_enforcement.without_2fa_at_enforcement
        and requirements.account_id is not null as enforced
    from at_enforcement
    left join requirements using (phase, account_id)
),

final as (
    select
        enforced.phase,
        enforced.account_id,
        enforced.enforce_on,
        enforced.without_2fa_at_notice,
        enforced.notified,
        enforced.enrolled_by_enforcement,
        enforced.without_2fa_at_enforcement,
        enforced.enforced,
        enforced.enforced
        and enrolled_after_requirement.account_id is not null as enrolled_after_enforcement
    from enforced
    left join enrolled_after_requirement using (phase, account_id)
)

select * from final
