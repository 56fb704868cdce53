-- Publish events, UTC: how each publish proved who made it.
create or replace view stg_publishes as
with

publishes as (
    select * from raw_publishes
),

final as (
    select
        occurred_at,
        cast(occurred_at as date) as day,
        package,
        username,
        via,
        token_kind,
        second_factor,
        -- what token-hardening campaigns count: a publish no second factor vouched for
        via = 'token' and second_factor = 'none' as without_2fa
    from publishes
)

select * from final;

comment on view stg_publishes is
    'Publish events (UTC): how each publish proved who made it (token kind, second factor; without_2fa: a token publish no second factor vouched for).';
