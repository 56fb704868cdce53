-- Logins and ELV challenges during each brown-out against the same hours whole weeks
-- earlier, and how many accounts enrolled in 2FA from each span's start to 7 days
-- after its end (the brown-out's enrolment window; a baseline's is the same days).
with

windows as (
    select name, starts_at, ends_at from plan_brownouts
),

logins as (
    select occurred_at, second_factor, outcome
    from stg_logins
    where occurred_at < $as_of::date
),

factors as (
    select account_id, created_at
    from registry.tfa_factors
    where created_at < $as_of::date + 1
),

-- Each brown-out's enrolment window: from its start (an account challenged during it
-- may enrol right then) to 7 days after its end, cut short at the next brown-out's
-- start, so no enrolment is credited to two brown-outs.
enrolment_windows as (
    select
        windows.name,
        windows.starts_at,
        windows.ends_at,
        -- least skips a null: the last brown-out has no later one.
        least(windows.ends_at + interval 7 day, min(later.starts_at)) as until
    from windows
    left join windows as later on later.starts_at > windows.starts_at
    group by windows.name, windows.starts_at, windows.ends_at
),

-- The baseline is the nearest whole number of weeks earlier whose enrolment window
-- (the brown-out's, shifted) overlaps no brown-out nor the 7 days after one: 7 days
-- earlier overlaps the brown-out itself as soon as its window is longer than a week,
-- and a span in another brown-out's following week would count that one's effect.
earlier_weeks as (
    select
        enrolment_windows.name,
        weeks.weeks,
        enrolment_windows.starts_at - weeks.weeks * interval 7 day as starts_at,
        enrolment_windows.ends_at - weeks.weeks * interval 7 day as ends_at,
        enrolment_windows.until - weeks.weeks * interval 7 day as until
    from enrolment_windows
    cross join range(1, 54) as weeks(weeks)
),

clear_weeks as (
    select * from earlier_weeks
    anti join windows as other
        on other.starts_at < earlier_weeks.until
        and earlier_weeks.starts_at < other.ends_at + interval 7 day
),

baselines as (
    select name, weeks, starts_at, ends_at
    from clear_weeks
    qualify row_number() over (partition by name order by weeks) = 1
),

-- Counted up to the start of $as_of, as compliance_funnel's spans: a report of a day is
-- written while it runs (the daily one at 10:00), and the brown-out's part of that day
-- against its baseline's whole one would not compare. A brown-out's window is clipped
-- there (empty before it starts), and its baseline's to the same length.
-- The logins likewise: a brown-out under way on $as_of counts its hours before the day
-- began (the report's day so far against its baseline's whole hours would read as
-- fewer logins), and its baseline as many hours.
spans as (
    select
        name as brownout,
        'brownout' as period,
        starts_at,
        ends_at,
        greatest(starts_at, least(ends_at, $as_of::date)) as logins_until,
        greatest(starts_at, least(until, $as_of::date)) as enrolments_until,
        until <= $as_of::date as enrolments_complete
    from enrolment_windows
    union all
    select
        baselines.name,
        'baseline',
        baselines.starts_at,
        baselines.ends_at,
        greatest(
            enrolment_windows.starts_at, least(enrolment_windows.ends_at, $as_of::date)
        ) - baselines.weeks * interval 7 day,
        greatest(
            enrolment_windows.starts_at, least(enrolment_windows.until, $as_of::date)
        ) - baselines.weeks * interval 7 day,
        enrolment_windows.until <= $as_of::date
    from baselines
    inner join enrolment_windows using (name)
),

span_logins as (
    select spans.brownout, spans.period, logins.second_factor, logins.outcome
    from spans
    inner join logins
        on logins.occurred_at >= spans.starts_at
        and logins.occurred_at < spans.logins_until
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
    select spans.brownout, spans.period, count(*) as enrolments
    from spans
    inner join first_factors
        on first_factors.enrolled_at >= spans.starts_at
        and first_factors.enrolled_at < spans.enrolments_until
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
        coalesce(enrolment_counts.enrolments, 0) as enrolments,
        spans.enrolments_until,
        spans.enrolments_complete
    from spans
    inner join windows on windows.name = spans.brownout
    left join login_counts using (brownout, period)
    left join enrolment_counts using (brownout, period)
    order by windows.starts_at, spans.period
)

select * from final
