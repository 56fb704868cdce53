-- Validate the staged login events file (temp table `incoming`); keeps the bad rows,
-- and the rows already loaded from another file (`duplicate`): the same events sent
-- again (a file re-sent compressed, with a byte-order mark or CRLF, corrected, or an
-- export overlapping the last) are not counted twice. A row repeated within the file
-- is not a duplicate of itself: each copy counts against a copy loaded before.
create or replace temp table flagged as
with

staged as (
    select * from incoming
),

judged as (
    select
        ordinal,
        line,
        occurred_at,
        username,
        second_factor,
        outcome,
        json_object(
            'occurred_at', occurred_at_text, 'username', username,
            'second_factor', second_factor, 'outcome', outcome
        )::varchar as record,
        case
            when occurred_at_text is null then 'occurred_at is missing'
            when occurred_at is null
                then 'occurred_at '''
                    || replace(replace(occurred_at_text, '\', '\\'), '''', '\''')
                    || ''' is not an ISO 8601 timestamp'
            when occurred_at > $now then 'occurred_at ' || occurred_at || ' is in the future'
            when occurred_at < $earliest then 'occurred_at ' || occurred_at || ' is before 2000'
            when username is null or username = '' then 'username is missing'
            when second_factor is null
                or second_factor not in ('none', 'elv', 'totp', 'webauthn')
                then 'second_factor '''
                    || replace(replace(coalesce(second_factor, ''), '\', '\\'), '''', '\''')
                    || ''' is not one of none, elv, totp, webauthn'
            when outcome is null or outcome not in ('success', 'failed', 'abandoned')
                then 'outcome '''
                    || replace(replace(coalesce(outcome, ''), '\', '\\'), '''', '\''')
                    || ''' is not one of success, failed, abandoned'
        end as problem
    from staged
),

-- Each good row's copy number among the file's identical rows.
copies as (
    select
        ordinal,
        occurred_at,
        username,
        second_factor,
        outcome,
        row_number() over (
            partition by occurred_at, username, second_factor, outcome order by ordinal
        ) as copy
    from judged
    where problem is null
),

-- How many copies of each such row are loaded already (the file's time span only).
loaded as (
    select occurred_at, username, second_factor, outcome, count(*) as copies
    from raw_logins
    semi join copies using (occurred_at, username, second_factor, outcome)
    where occurred_at between (select min(occurred_at) from copies)
        and (select max(occurred_at) from copies)
    group by all
),

duplicates as (
    select copies.ordinal
    from copies
    inner join loaded using (occurred_at, username, second_factor, outcome)
    where copies.copy <= loaded.copies
),

final as (
    select
        judged.ordinal,
        judged.line,
        judged.record,
        judged.problem,
        judged.problem is null and duplicates.ordinal is not null as duplicate
    from judged
    left join duplicates using (ordinal)
)

select * from final
where problem is not null or duplicate
