-- What the pipeline did each day: audit actions by kind, and emails by outcome.
with

actions as (
    select cast(created_at as date) as day, action as activity
    from registry.actions
    where created_at < $as_of::date + 1
),

notifications as (
    select
        cast(coalesce(sent_at, updated_at) as date) as day,
        'email ' || email || ' ' || state as activity
    from registry.notifications
    where state in ('sent', 'failed', 'skipped')
        and coalesce(sent_at, updated_at) < $as_of::date + 1
),

activity as (
    select * from actions
    union all
    select * from notifications
),

final as (
    select day, activity, count(*) as count
    from activity
    group by day, activity
    order by day, activity
)

select * from final
