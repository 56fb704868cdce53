-- Cohort memberships as known on $as_of: each stay of an account in a cohort, as the
-- span [first_qualified_on, left_on). The registry's row keeps an account's first day
-- and only its latest departure (cleared when it comes back), so an account that left
-- and came back would count as a member in between; the ledger's cohort_leave and
-- cohort_enter actions (dated by their keys: the build's day) split it into its stays.
-- Included ({{ }}) by the adoption models that follow cohorts over days.
with

-- (A row whose departure comes before its first day, which no build writes, was never
-- in: as before stays were read from the ledger.)
memberships as (
    select cohort, account_id, first_qualified_on, left_on
    from registry.cohort_memberships
    where first_qualified_on <= $as_of::date
        and (left_on is null or left_on >= first_qualified_on)
),

-- What the cohort builds recorded by $as_of: the day each account left or came in.
moves as (
    select
        phase as cohort,
        account_id,
        action = 'cohort_enter' as entered,
        cast(regexp_extract(effect_key, '(\d{4}-\d{2}-\d{2})$', 1) as date) as day
    from registry.actions
    where action in ('cohort_enter', 'cohort_leave')
        and created_at < $as_of::date + 1
),

-- Each account's entries and departures in day order: its first day, the moves after
-- it, and the registry's departure (a ledger from before the moves were kept has none).
events as (
    select cohort, account_id, first_qualified_on as day, true as entered
    from memberships
    union
    select moves.cohort, moves.account_id, moves.day, moves.entered
    from moves
    inner join memberships using (cohort, account_id)
    where moves.day > memberships.first_qualified_on
        and moves.day <= $as_of::date
    union
    select cohort, account_id, left_on, false
    from memberships
    where left_on <= $as_of::date
),

-- A stay starts at an entry after a departure (or at the first day); two entries in a
-- row (a backfill moved the first day earlier) are one stay. On one day an entry comes
-- first: a row whose departure is its first day was never in.
ordered as (
    select
        *,
        lag(entered) over (
            partition by cohort, account_id order by day, entered desc
        ) as entered_before
    from events
),

starts as (
    select cohort, account_id, day
    from ordered
    where entered and (entered_before is null or not entered_before)
),

departures as (
    select cohort, account_id, day
    from events
    where not entered
),

-- It ends at the first departure from the day it began.
final as (
    select
        starts.cohort,
        starts.account_id,
        starts.day as first_qualified_on,
        departures.day as left_on
    from starts
    asof left join departures
        on departures.cohort = starts.cohort
        and departures.account_id = starts.account_id
        and departures.day >= starts.day
)

select * from final
