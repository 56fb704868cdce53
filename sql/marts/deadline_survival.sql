-- For phases with per-account deadlines: of the accounts sent the phase's notice while
-- short of its second factor, the share still without it at the start of the Nth day
-- after their own notice (a survival curve over each account's own clock), with the
-- snoozed ones marked. Day N is read at its start, as enforcement reads an account's
-- deadline (its notice day + days_after_notice: own_deadline in the package's deadlines
-- module), so the curve's day days_after_notice counts whom the deadline day's
-- enforcement could meet: the funnel's "at enforcement" (int_funnel_accounts).
with

phases as (
    select phase, days_after_notice, snooze_days, two_factor
    from plan_phases
    where days_after_notice is not null
),

-- One sent notice per account and phase (the outbox's natural key): its clock's start.
-- Of accounts the registry still has: the outbox keeps the notices of deleted ones
-- (revision 0021), whose factors went with them, and which would count as without 2FA
-- for ever (the funnel, its cohort read from the memberships that went too, does not
-- count them either).
noticed as (
    select notifications.phase, notifications.account_id, notifications.sent_at
    from registry.notifications as notifications
    inner join phases using (phase)
    semi join registry.accounts as accounts on accounts.id = notifications.account_id
    where notifications.email = 'phase_notice'
        and notifications.state = 'sent'
        and notifications.sent_at < $as_of::date + 1
),

-- The factors that count for each phase: any, or a security key.
factors as (
    select phases.phase, factors.account_id, factors.created_at, factors.removed_at
    from registry.tfa_factors as factors
    cross join phases
    where phases.two_factor <> 'phishing_resistant' or factors.kind = 'webauthn'
),

-- Short at the notice: no counting factor held when it was sent.
at_notice as (
    select noticed.*
    from noticed
    where not exists (
        select 1 from factors
        where factors.phase = noticed.phase
            and factors.account_id = noticed.account_id
            and factors.created_at <= noticed.sent_at
            and (factors.removed_at is null or factors.removed_at > noticed.sent_at)
    )
),

-- The counting factors each made after its notice (up to $as_of), as the days whose
-- start holds them: from the day after it was made to the day it was removed (a removal
-- after $as_of not known yet). Held at the start of day D when created_at < D and
-- (removed_at null or removed_at >= D), as the funnel reads "at enforcement": a factor
-- made and removed again before a deadline does not meet it.
held as (
    select
        at_notice.phase,
        at_notice.account_id,
        cast(factors.created_at as date) + 1 as held_from,
        case
            when factors.removed_at < $as_of::date + 1 then cast(factors.removed_at as date)
        end as held_through
    from at_notice
    inner join factors
        on factors.phase = at_notice.phase
        and factors.account_id = at_notice.account_id
        and factors.created_at > at_notice.sent_at
        and factors.created_at < $as_of::date + 1
),

snoozed as (
    select snoozes.phase, snoozes.account_id, cast(snoozes.granted_at as date) as snoozed_on
    from registry.deadline_snoozes as snoozes
    inner join phases using (phase)
),

-- Each account's clock, day by day, while it is in the past of $as_of. Day N is the
-- start of notice day + N (00:00 UTC): a factor made during that day is not held yet,
-- as that day's enforcement may run before it comes. So day 0 counts everyone (short at
-- the notice), and one enrolling on its deadline day is still without at the deadline.
-- A snooze granted on notice day + N counts by then: granted on the deadline day,
-- before that day's enforcement, it postponed it.
days as (
    select
        at_notice.phase,
        at_notice.account_id,
        day_number,
        cast(at_notice.sent_at as date) + day_number::integer as day,
        snoozed.snoozed_on is not null
            and snoozed.snoozed_on <= cast(at_notice.sent_at as date) + day_number::integer
            as snoozed_by_then
    from at_notice
    inner join phases using (phase)
    left join snoozed using (phase, account_id)
    cross join range(0, 366) as numbers(day_number)
    where day_number <= phases.days_after_notice + phases.snooze_days + 14
        and cast(at_notice.sent_at as date) + day_number::integer <= $as_of::date
),

-- Still without a counting factor at the start of the day: none held then.
still as (
    select
        days.*,
        not exists (
            select 1 from held
            where held.phase = days.phase
                and held.account_id = days.account_id
                and held.held_from <= days.day
                and (held.held_through is null or held.held_through >= days.day)
        ) as still_without
    from days
),

final as (
    select
        phase,
        day_number as days_since_notice,
        count(*) as accounts,
        count(*) filter (where still_without) as still_without,
        count(*) filter (where still_without and snoozed_by_then) as snoozed,
        round(count(*) filter (where still_without) / count(*), 4) as share_still_without
    from still
    group by phase, day_number
    order by phase, day_number
)

select * from final
