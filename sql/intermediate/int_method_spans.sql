-- Each account's strongest 2FA method as spans of days, [from_day, until_day) (null
-- until_day: still so on $as_of; null method: no factor). Counted from the days its
-- factors change, never accounts x days. Made once per adoption build (a temp table)
-- and read by adoption_daily and adoption_daily_by_org.
with

-- Active on day D when active_from <= D < active_until (null: still active).
factors as (
    select * from ({{ int_factors_known }})
),

factor_changes as (
    select account_id, active_from as day, kind, 1 as delta
    from factors
    where active_until is null or active_until > active_from
    union all
    select account_id, active_until, kind, -1
    from factors
    where active_until > active_from
),

account_day_changes as (
    select
        account_id,
        day,
        coalesce(sum(delta) filter (where kind = 'totp'), 0) as totp_delta,
        coalesce(sum(delta) filter (where kind = 'webauthn'), 0) as webauthn_delta
    from factor_changes
    group by account_id, day
),

-- The strongest method an account has from each day its factors change (null: none).
method_changes as (
    select
        account_id,
        day,
        case
            when sum(webauthn_delta) over by_day > 0 then 'webauthn'
            when sum(totp_delta) over by_day > 0 then 'totp'
        end as method
    from account_day_changes
    window by_day as (partition by account_id order by day rows unbounded preceding)
),

final as (
    select
        account_id,
        method,
        day as from_day,
        lead(day) over (partition by account_id order by day) as until_day
    from method_changes
)

select * from final
