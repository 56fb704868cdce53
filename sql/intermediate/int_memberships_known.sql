-- Cohort memberships as known on $as_of: each stay of an account in a cohort, as the
-- span [first_qualified_on, left_on). The registry's row keeps an account's first day
-- and only its latest departure (cleared when it comes back), so an account that left
-- and came back would count as a member in between; the ledger's cohort_leave and
-- cohort_enter actions (dated by their keys: the build's day) split it into its stays.
-- Made once per adoption build (a temp table, rollout.report.adoption.ADOPTION_INPUTS)
-- and read by the models that follow cohorts over days.
with

-- (A row whose departure comes before its first day, which no build writes, was never
-- in: as before stays were read from the ledger.)
memberships as (
    select cohort, account_id, first_qualified_on, left_on
    from registry.cohort_memberships
    where first_qualified_on <= $as_of::date
        and (left_on is null or left_on >= first_qualified_on)
),

-- What the cohort builds recorded, by the day they were for (the key's last ten
-- characters: cohort-enter:<cohort>:<account>:<YYYY-MM-DD>).
cohort_moves as (
    select
        phase as cohort,
        account_id,
        action = 'cohort_enter' as entered,
        cast(right(effect_key, 10) as date) as day,
        created_at,
        id
    from registry.actions
    where action in ('cohort_enter', 'cohort_leave')
),

-- The accounts that left by $as_of: only their stays need the ledger. The others (most)
-- are their registry row as it stands, in since its first day.
left_once as (
    select cohort, account_id
    from cohort_moves
    where not entered and day <= $as_of::date
    union
    select cohort, account_id
    from memberships
    where left_on <= $as_of::date
),

stayed as (
    select memberships.cohort, memberships.account_id, memberships.first_qualified_on
    from memberships
    anti join left_once using (cohort, account_id)
),

-- Of a day built more than once (a rerun), the last build decides: a rerun that brings
-- an account back undoes the departure the first run recorded, and the reverse.
moves as (
    select cohort_moves.cohort, cohort_moves.account_id, cohort_moves.entered, cohort_moves.day
    from cohort_moves
    semi join left_once using (cohort, account_id)
    where cohort_moves.day <= $as_of::date
    qualify row_number() over (
        partition by cohort_moves.cohort, cohort_moves.account_id, cohort_moves.day
        order by cohort_moves.created_at desc, cohort_moves.id desc
    ) = 1
),

-- Each such account's entries and departures in day order: its first day, the moves
-- from it, and the registry's departure (a ledger from before the moves were kept has
-- none).
events as (
    select memberships.cohort, memberships.account_id, memberships.first_qualified_on as day,
        true as entered
    from memberships
    semi join left_once using (cohort, account_id)
    union
    select moves.cohort, moves.account_id, moves.day, moves.entered
    from moves
    inner join memberships using (cohort, account_id)
    where moves.day >= memberships.first_qualified_on
    union
    select cohort, account_id, left_on, false
    from memberships
    where left_on <= $as_of::date
),

-- A stay starts at an entry after a departure (or at the first day); two entries in a
-- row (a backfill moved the first day earlier) are one stay. On one day an entry comes
-- first, so a departure that day (the day's last build dropped it) leaves the stay
-- empty.
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

-- A stay ends at the first departure from the day it began.
stays as (
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
),

final as (
    select cohort, account_id, first_qualified_on, null::date as left_on
    from stayed
    union all
    select cohort, account_id, first_qualified_on, left_on
    from stays
)

select * from final
