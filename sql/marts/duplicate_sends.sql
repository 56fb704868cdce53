-- Outbox rows sent more than once: one notification (outbox_id, from the message's
-- custom_args) whose SendGrid events name two or more message ids, each a separate
-- send of the same email to the same address (a sender paused past its lease, then
-- sending what another sender had claimed again and sent). int_notification_delivery
-- takes only the events of the message id the registry recorded, so nothing else in the
-- warehouse shows the other sends.
-- A send is keyed by outbox_id and address (and email name): a registry replaced under
-- a kept warehouse numbers its outbox from 1 again, and its notification 5 to another
-- address is another row, not a second send. The message id of an event is its
-- sg_message_id up to SendGrid's suffix (the first '.'); events without one (empty:
-- SendGrid's answer had no X-Message-Id) or without an outbox id or address say nothing.
-- $since: only rows whose latest send's first event came at or after it.
with

events as (
    select * from raw_events
),

sends as (
    select
        outbox_id,
        email,
        email_name,
        split_part(sg_message_id, '.', 1) as message_id,
        min(occurred_at) as first_event_at
    from events
    where outbox_id is not null
        and nullif(email, '') is not null
        and nullif(split_part(sg_message_id, '.', 1), '') is not null
    group by outbox_id, email, email_name, split_part(sg_message_id, '.', 1)
),

final as (
    select
        outbox_id,
        email,
        email_name,
        count(*) as sends,
        min(first_event_at) as first_sent_at,
        max(first_event_at) as last_sent_at,
        list(message_id order by first_event_at, message_id) as message_ids
    from sends
    group by outbox_id, email, email_name
    having count(*) > 1 and max(first_event_at) >= $since
)

select * from final
order by first_sent_at, outbox_id, email, email_name
