-- 2FA adoption of each org's members, day by day from $since to $as_of, SPARSE: one
-- row per org on each day its figures change (the first on $since, or on the first
-- day it has members), each row holding until the org's next row. A reader
-- forward-fills (docs/adoption-marts.md). Orgs x days would be ~38M rows at npm scale
-- (245k orgs x 155 days), so this is counted from change events, never a grid: the
-- days a member joins or leaves, the days a member's strongest 2FA method changes,
-- the days of first-ever factors, then running sums per org.
with

orgs as (
    select id as org_id, name as org
    from registry.orgs
    where created_at < $as_of::date + 1
),

-- A member on day D when joined_on <= D < left_on (null: still a member), as
-- adoption_by_org counts members: joined_at < D + 1, removed_at null or >= D + 1.
member_spans as (
    select
        org_id,
        account_id,
        cast(joined_at as date) as joined_on,
        -- a removal after the as-of day is not known yet
        case when removed_at < $as_of::date + 1 then cast(removed_at as date) end as left_on
    from registry.org_members
    where joined_at < $as_of::date + 1
        -- a membership that ends the day it starts is never one at a day's end
        and (removed_at is null or removed_at >= cast(joined_at as date) + 1)
),

-- Each account's strongest method as spans of days, and its first factor's day
-- (temp tables made once by build_adoption from the intermediate models).
method_spans as (
    select * from int_method_spans
),

first_factors as (
    select * from int_first_factors
),

-- Where an account's method spans and its membership spans overlap.
org_method_spans as (
    select
        member_spans.org_id,
        method_spans.method,
        greatest(method_spans.from_day, member_spans.joined_on) as from_day,
        least(method_spans.until_day, member_spans.left_on) as until_day
    from method_spans
    inner join member_spans using (account_id)
    where method_spans.method is not null
),

-- First-ever factors of members, on the day they were created.
org_enrolments as (
    select member_spans.org_id, first_factors.enrolled_on as day
    from first_factors
    inner join member_spans using (account_id)
    where first_factors.enrolled_on >= member_spans.joined_on
        and (member_spans.left_on is null or first_factors.enrolled_on < member_spans.left_on)
        and first_factors.enrolled_on >= $since::date
),

changes as (
    select org_id, joined_on as day, 1 as members, 0 as totp, 0 as webauthn,
        0 as newly_enrolled, 0 as newly_enrolled_before
    from member_spans
    union all
    select org_id, left_on, -1, 0, 0, 0, 0
    from member_spans
    where left_on is not null
    union all
    select org_id, from_day, 0,
        case when method = 'totp' then 1 else 0 end,
        case when method = 'webauthn' then 1 else 0 end,
        0, 0
    from org_method_spans
    where until_day is null or until_day > from_day
    union all
    select org_id, until_day, 0,
        case when method = 'totp' then -1 else 0 end,
        case when method = 'webauthn' then -1 else 0 end,
        0, 0
    from org_method_spans
    where until_day > from_day
    union all
    select org_id, day, 0, 0, 0, 1, 0
    from org_enrolments
    union all
    -- newly_enrolled is the day's own count, so the next day differs (back to 0 or
    -- not): that day's row must know the day before's count
    select org_id, day + 1, 0, 0, 0, 0, 1
    from org_enrolments
),

-- Per org, the days its figures change: members, totp or webauthn move (their
-- changes before the first reported day make its starting point), or newly_enrolled
-- differs from the day before's. Not a change: a day whose moves cancel out.
day_changes as (
    select
        org_id,
        greatest(day, $since::date) as day,
        sum(members) as members,
        sum(totp) as totp,
        sum(webauthn) as webauthn,
        sum(newly_enrolled) as newly_enrolled
    from changes
    where day <= $as_of::date
    group by all
    having sum(members) <> 0
        or sum(totp) <> 0
        or sum(webauthn) <> 0
        or sum(newly_enrolled) <> sum(newly_enrolled_before)
),

-- The figures on those days: running sums of the changes.
changed as (
    select
        org_id,
        day,
        sum(members) over by_day as members,
        sum(totp) over by_day as totp,
        sum(webauthn) over by_day as webauthn,
        newly_enrolled
    from day_changes
    window by_day as (partition by org_id order by day rows unbounded preceding)
),

final as (
    select
        changed.day,
        orgs.org,
        cast(changed.members as bigint) as members,
        cast(changed.totp + changed.webauthn as bigint) as with_2fa,
        cast(changed.totp as bigint) as totp,
        cast(changed.webauthn as bigint) as webauthn,
        case
            when changed.members = 0 then 0.0
            else (changed.totp + changed.webauthn) / changed.members
        end::double as share,
        cast(changed.newly_enrolled as bigint) as newly_enrolled
    from changed
    inner join orgs using (org_id)
    order by orgs.org, changed.day
)

select * from final
