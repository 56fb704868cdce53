-- The delivery state of each notification in the temp table `touched_notifications`
-- (outbox_id, message_id: the registry's, for those the events loaded since the last
-- time name) from all of its SendGrid events. An event counts for a notification only
-- when its sg_message_id is the notification's message id followed by SendGrid's
-- suffix (or when either is unknown; an empty message id is unknown: SendGrid's answer
-- had no X-Message-Id): another registry's notification of the same id (a registry
-- replaced, its warehouse kept) takes none of its events.
-- Events come out of order and again, so the state is the most final event's (by the
-- order of DELIVERY_STATES in rollout/registry/models.py), not the latest's: a bounce
-- after a deferral is bounced, a spam report after the delivery is spam_report. Opens
-- and clicks prove the mail arrived (delivered); other events say nothing of it.
with

events as (
    select * from raw_events
),

touched as (
    select * from touched_notifications
),

states as (
    select
        events.outbox_id,
        events.occurred_at,
        events.sg_event_id,
        case events.event
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
        case when events.event = 'bounce' and events.bounce_type is not null
            then events.bounce_type || ': ' || coalesce(events.reason, '')
            else events.reason end as reason
    from events
    inner join touched using (outbox_id)
    where nullif(events.sg_message_id, '') is null
        or nullif(touched.message_id, '') is null
        or events.sg_message_id = touched.message_id
        or starts_with(events.sg_message_id, touched.message_id || '.')
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

-- The deciding event: the most final, then the latest, then by id (two events of a kind
-- in one second), whole: its reason even when NULL (arg_max would skip a NULL and take a
-- less final event's reason).
final as (
    select
        outbox_id,
        arg_max_null(delivery, (finality, occurred_at, sg_event_id)) as delivery,
        arg_max_null(occurred_at, (finality, occurred_at, sg_event_id)) as delivery_at,
        arg_max_null(reason, (finality, occurred_at, sg_event_id)) as delivery_reason
    from ranked
    group by outbox_id
)

select * from final
