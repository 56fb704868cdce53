-- Logins and ELV challenges during each brown-out against the same hours a week
-- earlier, and how many accounts enrolled in 2FA in the week after each.
with

windows as (
    select name, starts_at, ends_at from plan_brownouts
),

logins as (
    select occurred_at, second_factor, outcome
    from stg_logins
    where occurred_at < $as_of::date + 1
),

factors as (
    select account_id, created_at
    from registry.tfa_factors
    where created_at < $as_of::date + 1
),

-- The baseline is the same hours 7 days earlier, or 14, 21, ... when that would be
-- another brown-out: a week apart, brown-out 2's baseline would be brown-out 1.
earlier_weeks as (
    select
        windows.name,
        weeks.weeks,
        windows.starts_at - weeks.weeks * interval 7 day as starts_at,
        windows.ends_at - weeks.weeks * interval 7 day as ends_at
    from windows
    cross join range(1, 54) as weeks(weeks)
),

clear_weeks as (
    select * from earlier_weeks
    anti join windows as other
        on other.starts_at < earlier_weeks.ends_at
        and earlier_weeks.starts_at < other.ends_at
),

baselines as (
    select name, starts_at, ends_at
    from clear_weeks
    qualify row_number() over (partition by name order by weeks) = 1
),

spans as (
    select name as brownout, 'brownout' as period, starts_at, ends_at
    from windows
    union all
    select name, 'baseline', starts_at, ends_at
    from baselines
),

span_logins as (
    select spans.brownout, spans.period, logins.second_factor, logins.outcome
    from spans
    inner join logins
        on logins.occurred_at >= spans.starts_at
        and logins.occurred_at < spans.ends_at
),

login_counts as (
    select
        brownout,
        period,
        count(*) as logins,
        count(*) filter (where second_factor = 'elv') as elv_challenges,
        count(*) filter (where second_factor = 'elv' and outcome = 'success') as elv_completed,
        count(*) filter (where second_factor = 'elv' and outcome = 'failed') as elv_failed,
        count(*) filter (where second_factor = 'elv' and outcome = 'abandoned') as elv_abandoned
    from span_logins
    group by brownout, period
),

first_factors as (
    select account_id, min(created_at) as enrolled_at
    from factors
    group by account_id
),

enrolment_counts as (
    select spans.brownout, spans.period, count(*) as enrolments_next_7d
    from spans
    inner join first_factors
        on first_factors.enrolled_at >= spans.ends_at
        and first_factors.enrolled_at < spans.ends_at + interval 7 day
    group by spans.brownout, spans.period
),

final as (
    select
        spans.brownout,
        spans.period,
        spans.starts_at,
        spans.ends_at,
        coalesce(login_counts.logins, 0) as logins,
        coalesce(login_counts.elv_challenges, 0) as elv_challenges,
        coalesce(login_counts.elv_completed, 0) as elv_completed,
        coalesce(login_counts.elv_failed, 0) as elv_failed,
        coalesce(login_counts.elv_abandoned, 0) as elv_abandoned,
        coalesce(enrolment_counts.enrolments_next_7d, 0) as enrolments_next_7d
    from spans
    inner join windows on windows.name = spans.brownout
    left join login_counts using (brownout, period)
    left join enrolment_counts using (brownout, period)
    order by windows.starts_at, spans.period
)

select * from final
