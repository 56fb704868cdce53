-- Merge the sends of the events just loaded (temp table new_sends, from
-- sql/raw/stage_new_sends.sql) into event_sends, then list again in
-- duplicate_sends_kept every outbox row they touched that now has more than one
-- message id. The same as grouping every event again (sql/intermediate/int_event_sends
-- over all files, then sql/marts/duplicate_sends): a send's first event is the min of
-- its first events before and now, and an outbox row no new event names keeps its row.
-- One run of statements, inside ingest's transaction.
create or replace temp table merged_sends as
select outbox_id, email, email_name, message_id, min(first_event_at) as first_event_at
from (
    select * from new_sends
    union all
    select kept.* from event_sends as kept
    semi join new_sends as n
        on kept.outbox_id = n.outbox_id
        and kept.email = n.email
        and kept.email_name is not distinct from n.email_name
        and kept.message_id = n.message_id
)
group by outbox_id, email, email_name, message_id;

delete from event_sends as kept
where exists (
    select 1 from merged_sends as m
    where kept.outbox_id = m.outbox_id
        and kept.email = m.email
        and kept.email_name is not distinct from m.email_name
        and kept.message_id = m.message_id
);

insert into event_sends
select outbox_id, email, email_name, message_id, first_event_at from merged_sends;

delete from duplicate_sends_kept as kept
where exists (
    select 1 from merged_sends as m
    where kept.outbox_id = m.outbox_id
        and kept.email = m.email
        and kept.email_name is not distinct from m.email_name
);

insert into duplicate_sends_kept
select
    outbox_id,
    email,
    email_name,
    count(*) as sends,
    min(first_event_at) as first_sent_at,
    max(first_event_at) as last_sent_at,
    list(message_id order by first_event_at, message_id) as message_ids
from event_sends as kept
semi join (select distinct outbox_id, email, email_name from merged_sends) as m
    on kept.outbox_id = m.outbox_id
    and kept.email = m.email
    and kept.email_name is not distinct from m.email_name
group by outbox_id, email, email_name
having count(*) > 1;

drop table merged_sends;
drop table new_sends
