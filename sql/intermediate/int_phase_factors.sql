-- The factors each plan phase counts, as known on $as_of (int_factors_known): for a
-- phishing_resistant phase a security key only (TOTP alone falls short of it), any
-- factor otherwise, as deadline_survival counts. Included ({{ }}) by
-- int_notice_enrolments, int_funnel_accounts and compliance_funnel.
with

phases as (
    select phase, two_factor from plan_phases
),

-- Active on day D when active_from <= D < active_until (null: still active).
factors as (
    select * from ({{ int_factors_known }})
),

final as (
    select phases.phase, factors.*
    from phases
    inner join factors
        on phases.two_factor <> 'phishing_resistant' or factors.kind = 'webauthn'
)

select * from final
