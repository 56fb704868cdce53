-- Load the staged events of the accepted files (temp table accepted_files: file_index,
-- file_id) that passed the checks, each event once: its first copy among the files, and
-- none when a file loaded before brought it (SendGrid posts a batch again when it thinks
-- the first post failed, under a new signature: another file, the same events).
insert into raw_events (
    sg_event_id, event, occurred_at, email, outbox_id, email_name, sg_message_id,
    bounce_type, reason, file_id
)
with

candidates as (
    select incoming.*, accepted_files.file_id
    from incoming
    join accepted_files using (file_index)
    anti join flagged using (ordinal)
),

first_copies as (
    select * from candidates
    qualify row_number() over (partition by sg_event_id order by ordinal) = 1
),

final as (
    select * from first_copies
    anti join raw_events using (sg_event_id)
)

select
    sg_event_id, event, occurred_at, email, outbox_id, email_name, sg_message_id,
    bounce_type, reason, file_id
from final
