-- The sends named by the events of files numbered from $from_file_id (temp table
-- new_sends), for sql/raw/keep_sends.sql to merge into event_sends.
create or replace temp table new_sends as
select * from ({{ int_event_sends }})
