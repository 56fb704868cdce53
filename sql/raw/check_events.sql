-- Validate staged SendGrid delivery events (view `incoming`: the events of one or more
-- files, file_index says whose); keeps the bad rows. A repeated event is not bad: the
-- load keeps its first copy and counts the others as duplicates.
create or replace temp table flagged as
with

staged as (
    select * from incoming
),

judged as (
    select
        *,
        case
            when shape_problem is not null then shape_problem
            when sg_event_id is null or sg_event_id = '' then 'sg_event_id is missing'
            when event is null or event = '' then 'event is missing'
            -- A type SendGrid adds later (or one rollout has no use for, such as
            -- account_status_change) is loaded and says nothing of delivery: only a
            -- name unlike any event type is bad.
            when not regexp_full_match(event, '[a-z][a-z_]{0,49}')
                then 'event '''
                    || replace(replace(event, '\', '\\'), '''', '\''')
                    || ''' is not an event type (lowercase letters and _)'
            when timestamp_text is null or timestamp_text = '' then 'timestamp is missing'
            when occurred_at is null
                then 'timestamp '''
                    || replace(replace(timestamp_text, '\', '\\'), '''', '\''')
                    || ''' is not a Unix time in whole seconds'
            when occurred_at > $latest then 'timestamp ' || occurred_at || ' is in the future'
            when occurred_at < $earliest then 'timestamp ' || occurred_at || ' is before 2000'
            when outbox_id_text is not null and outbox_id is null
                then 'outbox_id '''
                    || replace(replace(outbox_id_text, '\', '\\'), '''', '\''')
                    || ''' is not a positive whole number'
        end as problem
    from staged
),

final as (
    -- The record as sent, only for the bad rows (usually none of a million).
    select
        ordinal,
        file_index,
        line,
        json_object(
            'sg_event_id', sg_event_id, 'event', event, 'timestamp', timestamp_text,
            'email', email, 'outbox_id', outbox_id_text
        )::varchar as record,
        problem,
        false as duplicate
    from judged
    where problem is not null
)

select * from final
