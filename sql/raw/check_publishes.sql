-- Validate the staged publish events file (temp table `incoming`); keeps the bad rows,
-- and the rows already loaded from another file (`duplicate`): the same publishes sent
-- again (a file re-sent compressed, with a byte-order mark or CRLF, corrected, or an
-- export overlapping the last) are not counted twice. A row repeated within the file is
-- another publish (the same person may publish twice in a second): each copy counts
-- against a copy loaded before.
-- `via`: `token` (with the token's kind), `session` (published from a logged-in
-- session) or `trusted` (trusted publishing: an OIDC identity, no token, no person).
-- `second_factor`: what was proved at publish time (`none` when nothing was: an
-- automation token, or a granular token made to bypass 2FA).
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
        package,
        username,
        via,
        token_kind,
        second_factor,
        json_object(
            'occurred_at', occurred_at_text, 'package', package, 'username', username,
            'via', via, 'token_kind', token_kind, 'second_factor', second_factor
        )::varchar as record,
        case
            when occurred_at_text is null then 'occurred_at is missing'
            when occurred_at is null
                then 'occurred_at '''
                    || replace(replace(occurred_at_text, '\', '\\'), '''', '\''')
                    || ''' is not an ISO 8601 timestamp'
            when occurred_at > $now then 'occurred_at ' || occurred_at || ' is in the future'
            when occurred_at < $earliest then 'occurred_at ' || occurred_at || ' is before 2000'
            when package is null or package = '' then 'package name is missing'
            when not regexp_full_match(package, $name_pattern)
                then 'package name '''
                    || replace(replace(package, '\', '\\'), '''', '\''')
                    || ''' is not a valid npm package name'
            when username is null or username = '' then 'username is missing'
            when via is null or via not in ('token', 'session', 'trusted')
                then 'via '''
                    || replace(replace(coalesce(via, ''), '\', '\\'), '''', '\''')
                    || ''' is not one of token, session, trusted'
            when via = 'token' and token_kind is null
                then 'token_kind is missing (via is token)'
            when via = 'token' and token_kind not in ('publish', 'automation', 'granular')
                then 'token_kind '''
                    || replace(replace(token_kind, '\', '\\'), '''', '\''')
                    || ''' is not one of publish, automation, granular (a token that publishes)'
            when via <> 'token' and token_kind is not null
                then 'token_kind '''
                    || replace(replace(token_kind, '\', '\\'), '''', '\''')
                    || ''' given, but via is ' || via
            when second_factor is null or second_factor not in ('none', 'totp', 'webauthn')
                then 'second_factor '''
                    || replace(replace(coalesce(second_factor, ''), '\', '\\'), '''', '\''')
                    || ''' is not one of none, totp, webauthn'
            when token_kind = 'automation' and second_factor <> 'none'
                then 'second_factor ' || second_factor
                    || ' with an automation token, which never asks for one'
            when via = 'trusted' and second_factor <> 'none'
                then 'second_factor ' || second_factor
                    || ' with trusted publishing, where no person signs in'
        end as problem
    from staged
),

-- Each good row's copy number among the file's identical rows. token_kind is NULL
-- unless via is token: the key holds it as '' so that NULLs match.
copies as (
    select
        ordinal,
        occurred_at,
        package,
        username,
        via,
        coalesce(token_kind, '') as token_kind,
        second_factor,
        row_number() over (
            partition by occurred_at, package, username, via, token_kind, second_factor
            order by ordinal
        ) as copy
    from judged
    where problem is null
),

-- How many copies of each such row are loaded already (the file's time span only).
loaded as (
    select
        occurred_at, package, username, via, coalesce(token_kind, '') as token_kind,
        second_factor, count(*) as copies
    from raw_publishes
    semi join copies using (occurred_at, package, username, via, second_factor)
    where occurred_at between (select min(occurred_at) from copies)
        and (select max(occurred_at) from copies)
    group by all
),

duplicates as (
    select copies.ordinal
    from copies
    inner join loaded using (occurred_at, package, username, via, token_kind, second_factor)
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
