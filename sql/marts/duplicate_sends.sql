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
-- Read from duplicate_sends_kept, which ingest keeps as it loads events
-- (sql/raw/keep_sends.sql over int_event_sends): a small table, not millions of events.
-- $since: only rows whose latest send's first event came at or after it.
with

kept as (
    select * from duplicate_sends_kept
),

final as (
    select outbox_id, email, email_name, sends, first_sent_at, last_sent_at, message_ids
    from kept
    where last_sent_at >= $since
)

select * from final
order by first_sent_at, outbox_id, email, email_name
