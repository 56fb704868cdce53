-- Validate the staged login events file (temp table `incoming`); keeps the bad rows.
create or replace temp table flagged as
with

staged as (
    select * from incoming
),

final as (
    select
        ordinal,
        line,
        json_object(
            'occurred_at', occurred_at_text, 'username', username,
            'second_factor', second_factor, 'outcome', outcome
        )::varchar as record,
        case
            when occurred_at_text is null then 'occurred_at is missing'
            when occurred_at is null
                then 'occurred_at ''' || occurred_at_text || ''' is not an ISO 8601 timestamp'
            when occurred_at > $now then 'occurred_at ' || occurred_at || ' is in the future'
            when occurred_at < $earliest then 'occurred_at ' || occurred_at || ' is before 2000'
            when username is null or username = '' then 'username is missing'
            when second_factor is null
                or second_factor not in ('none', 'elv', 'totp', 'webauthn')
                then 'second_factor ''' || coalesce(second_factor, '')
                    || ''' is not one of none, elv, totp, webauthn'
            when outcome is null or outcome not in ('success', 'failed', 'abandoned')
                then 'outcome ''' || coalesce(outcome, '')
                    || ''' is not one of success, failed, abandoned'
        end as problem,
        false as duplicate
    from staged
)

select * from final
where problem is not null
