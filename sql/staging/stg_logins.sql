-- Login events, UTC.
create or replace view stg_logins as
with

logins as (
    select * from raw_logins
),

final as (
    select occurred_at, cast(occurred_at as date) as day, username, second_factor, outcome
    from logins
)

select * from final;

comment on view stg_logins is
    'Login events (UTC) as landed, from raw_logins.';
