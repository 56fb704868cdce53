-- How each day's publishes proved who made them (stg_publishes): through a token of
-- which kind, from a session, or by trusted publishing, and with which second factor.
-- What a token-hardening campaign watches: publishes through tokens with no second
-- factor should fall, trusted publishing and phishing-resistant factors rise.
with

publishes as (
    select * from stg_publishes
    where day >= $since::date and day <= $as_of::date
),

final as (
    select
        day,
        via,
        token_kind,
        second_factor,
        count(*) as publishes,
        count(distinct username) as publishers,
        count(distinct package) as packages
    from publishes
    group by day, via, token_kind, second_factor
)

select * from final
order by day, via, token_kind nulls first, second_factor
