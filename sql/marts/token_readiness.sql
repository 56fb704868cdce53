-- Whether each cohort's maintainers could keep publishing once 2FA is required of
-- them: who still publishes with a legacy (unnamed) or personal publish token, and
-- who already has a named automation token for CI. For the campaigns after npm 2022's:
-- who depends on tokens a token campaign revokes (classic tokens, tokens that publish
-- without a second factor, used lately), and who has a security key; and, for a plan
-- capping how long a token is valid (token_max_lifetime_days,
-- write_token_max_lifetime_days), who publishes or reads with a token that outlives it.
with

-- Every cohort built by $as_of, its build having selected anyone or not (a temp table
-- made once by build_adoption from the intermediate model): one that selected no one
-- has a row of 0 maintainers, one not built yet no row.
cohorts as (
    select cohort from int_cohorts_built
),

-- The cohort's accounts on $as_of: each stay of an account in a cohort (a temp table
-- made once by build_adoption from the intermediate model), as adoption_daily counts
-- them. The registry's row alone keeps an account that left and came back in the
-- cohort over the days it was out.
members as (
    select distinct cohort, account_id
    from int_memberships_known
    where first_qualified_on <= $as_of::date
        and (left_on is null or left_on > $as_of::date)
),

-- The caps of the plan's phases on each cohort (the temp table plan_phases): on every
-- token, and on a token that publishes (the shorter of a phase's two caps). A cohort no
-- phase caps has no row.
caps as (
    select
        cohort,
        min(token_max_lifetime_days) as cap_any,
        min(coalesce(
            least(token_max_lifetime_days, write_token_max_lifetime_days),
            token_max_lifetime_days,
            write_token_max_lifetime_days
        )) as cap_write
    from plan_phases
    where token_max_lifetime_days is not null or write_token_max_lifetime_days is not null
    group by cohort
),

tokens as (
    select
        account_id,
        name,
        kind,
        bypass_2fa,
        writes,
        created_at,
        expires_at,
        -- the 90 days ending with the as-of day
        last_used_at >= $as_of::date - 89 and last_used_at < $as_of::date + 1 as used_lately
    from registry.tokens
    -- Held at the end of the as-of day: made, and neither revoked nor expired, by then
    -- (an expired token works no more than a revoked one: registry live_token).
    where created_at < $as_of::date + 1
        and (revoked_at is null or revoked_at >= $as_of::date + 1)
        and (expires_at is null or expires_at >= $as_of::date + 1)
),

account_tokens as (
    select
        account_id,
        -- a legacy read-only token cannot publish
        coalesce(bool_or(name is null and kind <> 'read_only' and used_lately), false)
            as publishing_legacy,
        coalesce(bool_or(name is not null and kind = 'publish' and used_lately), false)
            as publishing_personal,
        bool_or(name is not null and kind = 'automation') as with_automation,
        coalesce(
            bool_or(kind in ('automation', 'publish', 'read_only') and used_lately), false
        ) as classic_in_use,
        coalesce(bool_or(bypass_2fa and used_lately), false) as bypass_in_use,
        coalesce(bool_or(expires_at is null and used_lately), false) as never_expiring_in_use
    from tokens
    group by account_id
),

-- Each cohort's accounts using a token valid for longer than a cap of a phase on that
-- cohort, as enforcement judges it (to the microsecond): one that never
-- expires, or expires more than the cap's days after it was made; a cap on publishing
-- tokens judges only those.
over_cap as (
    select distinct members.cohort, tokens.account_id
    from members
    inner join caps using (cohort)
    inner join tokens using (account_id)
    where tokens.used_lately
        and (
            (caps.cap_any is not null
                and (tokens.expires_at is null
                    or tokens.expires_at > tokens.created_at + to_days(caps.cap_any)))
            or (tokens.writes
                and (tokens.expires_at is null
                    or tokens.expires_at > tokens.created_at + to_days(caps.cap_write)))
        )
),

-- A security key held at the end of $as_of.
with_webauthn as (
    select distinct account_id
    from registry.tfa_factors
    where kind = 'webauthn'
        and created_at < $as_of::date + 1
        and (removed_at is null or removed_at >= $as_of::date + 1)
),

final as (
    select
        cohorts.cohort,
        count(members.account_id) as maintainers,
        count(*) filter (where account_tokens.publishing_legacy) as publishing_legacy,
        count(*) filter (where account_tokens.publishing_personal) as publishing_personal,
        count(*) filter (where account_tokens.with_automation) as with_automation,
        count(members.account_id) - count(*) filter (
            where account_tokens.publishing_legacy or account_tokens.publishing_personal
        ) as ready,
        count(*) filter (where account_tokens.classic_in_use) as classic_in_use,
        count(*) filter (where account_tokens.bypass_in_use) as bypass_in_use,
        count(with_webauthn.account_id) as with_webauthn,
        count(*) filter (where account_tokens.never_expiring_in_use) as never_expiring_in_use,
        -- null: no phase on the cohort caps a token's lifetime
        any_value(caps.cap_write) as token_cap_days,
        case when any_value(caps.cap_write) is not null
            then count(over_cap.account_id) end as over_cap_in_use
    from cohorts
    left join members using (cohort)
    left join account_tokens using (account_id)
    left join with_webauthn using (account_id)
    left join caps on caps.cohort = cohorts.cohort
    left join over_cap on over_cap.cohort = members.cohort
        and over_cap.account_id = members.account_id
    group by cohorts.cohort
    order by cohorts.cohort
)

select * from final
