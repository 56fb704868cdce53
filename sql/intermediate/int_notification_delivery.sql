-- Each notification's delivery state from its SendGrid events: of the notifications
-- with an event in a file loaded after $since_file_id, all their events decide.
-- Events come out of order and again, so the state is the most final event's (by the
-- order of DELIVERY_STATES in rollout/registry/models.py), not the latest's: a bounce
-- after a deferral is bounced, a spam report after the delivery is spam_report. Opens
-- and clicks prove the mail arrived (delivered); unsubscribes say nothing of it.
with

events as (
    select * from raw_events
),

touched as (
    select distinct outbox_id from events
    where file_id > $since_file_id and outbox_id is not null
),

states as (
    select
        outbox_id,
        occurred_at,
        case event
            when 'processed' then 'processed'
            when 'deferred' then 'deferred'
            when 'delivered' then 'delivered'
            when 'open' then 'delivered'
            when 'click' then 'delivered'
            when 'dropped' then 'dropped'
            when 'bounce' then 'bounced'
            when 'spamreport' then 'spam_report'
        end as delivery,
        -- A bounce says whether the server refused the address or blocked the mail.
        case when event = 'bounce' and bounce_type is not null
            then bounce_type || ': ' || coalesce(reason, '') else reason end as reason
    from events
    semi join touched using (outbox_id)
),

ranked as (
    select
        *,
        list_position(
            ['processed', 'deferred', 'delivered', 'dropped', 'bounced', 'spam_report'],
            delivery
        ) as finality
    from states
    where delivery is not null
),

final as (
    select
        outbox_id,
        arg_max(delivery, (finality, occurred_at)) as delivery,
        arg_max(occurred_at, (finality, occurred_at)) as delivery_at,
        arg_max(reason, (finality, occurred_at)) as delivery_reason
    from ranked
    group by outbox_id
)

select * from final
