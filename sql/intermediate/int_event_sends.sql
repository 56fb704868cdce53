-- Each send SendGrid's events name: one row per outbox row (outbox_id, address and
-- email name) and message id (sg_message_id up to SendGrid's suffix, the first '.'),
-- with the time of its first event. Events without an outbox id, an address or a
-- message id (empty: SendGrid's answer had no X-Message-Id) say nothing.
-- $from_file_id: only the events of the files numbered from it (0: every event loaded;
-- ingest passes the first file of the batch it has just loaded, whose ids are the newest).
with

events as (
    select * from raw_events
    where file_id >= $from_file_id
),

final as (
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
)

select * from final
