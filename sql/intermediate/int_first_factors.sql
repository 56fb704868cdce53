-- The day of each account's first-ever 2FA factor (even one removed that same day),
-- up to $as_of. A temp table during build_adoption, read by the daily adoption marts.
with

factors as (
    select account_id, cast(created_at as date) as created_on
    from registry.tfa_factors
    where created_at < $as_of::date + 1
),

final as (
    select account_id, min(created_on) as enrolled_on
    from factors
    group by account_id
)

select * from final
