-- Each plan phase's cohort accounts at its notice, and which stage of the compliance
-- funnel each reached by the end of $as_of. Every stage is a subset of the one before
-- (a flag is only true where the previous one is), so the funnel's counts narrow.
-- Included ({{ }}) by compliance_funnel.
with

phases as (
    select phase, notice_on, enforce_on, two_factor from plan_phases
),

-- Active on day D when active_from <= D < active_until (null: still active).
factors as (
    select * from ({{ int_factors_known }})
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
    select distinct phase, account_id
    from registry.notifications
    where email = 'phase_notice'
        and state = 'sent'
        and coalesce(sent_at, updated_at) < $as_of::date + 1
),

-- "At enforcement" reads like "at notice": the start of enforce_on, 2FA on the day
-- before, so enforcement runs on the day meet these accounts.
with_2fa_at_enforcement as (
    select distinct notice_enrolments.phase, notice_enrolments.account_id
    from notice_enrolments
    inner join phases using (phase)
    inner join factors using (account_id)
    where factors.active_from < phases.enforce_on
        and (factors.active_until is null or factors.active_until >= phases.enforce_on)
        -- a factor the phase counts, as at notice (int_notice_enrolments)
        and (phases.two_factor <> 'phishing_resistant' or factors.kind = 'webauthn')
),

enrolled_after_requirement as (
    select distinct requirements.phase, requirements.account_id
    from requirements
    inner join phases using (phase)
    inner join factors using (account_id)
    where factors.created_at > requirements.required_at
        and (phases.two_factor <> 'phishing_resistant' or factors.kind = 'webauthn')
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
        notified.notified
        and phases.enforce_on <= $as_of::date
        and with_2fa_at_enforcement.account_id is null as without_2fa_at_enforcement
    from notified
    inner join phases using (phase)
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
        enforced.without_2fa_at_notice,
        enforced.notified,
        enforced.without_2fa_at_enforcement,
        enforced.enforced,
        enforced.enforced
        and enrolled_after_requirement.account_id is not null as enrolled_after_enforcement
    from enforced
    left join enrolled_after_requirement using (phase, account_id)
)

select * from final
