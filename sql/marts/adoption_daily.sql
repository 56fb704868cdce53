-- 2FA adoption each day from $since to $as_of, of every account and of each cohort.
-- Counted from events, never accounts x days (2M x 150 rows at npm scale): the days
-- an account's strongest 2FA method changes, the days it enters or leaves a
-- population, then running sums over the days.
with

accounts as (
    select id as account_id, cast(created_at as date) as created_on
    from registry.accounts
    where created_at < $as_of::date + 1
),

-- Each stay of an account in a cohort (a temp table made once by build_adoption from
-- the intermediate model).
memberships as (
    select * from int_memberships_known
),

-- Every cohort built by $as_of, its build having selected anyone or not (a temp table
-- made once by build_adoption from the intermediate model): one that selected no one
-- has 0 accounts every day, one not built yet has no rows.
cohorts as (
    select cohort from int_cohorts_built
),

-- Each account's strongest method as spans of days, and its first factor's day
-- (temp tables made once by build_adoption from the intermediate models).
method_spans as (
    select * from int_method_spans
),

first_factors as (
    select * from int_first_factors
),

days as (
    select cast(generate_series as date) as day
    from generate_series($since::date, $as_of::date, interval 1 day)
),

populations as (
    select 'all' as population
    union all
    select 'cohort:' || cohort from cohorts
),

-- Each population as spans of days per account: [entered_on, left_on).
population_spans as (
    select 'all' as population, account_id, created_on as entered_on, null::date as left_on
    from accounts
    union all
    select 'cohort:' || cohort, account_id, first_qualified_on, left_on
    from memberships
    where left_on is null or left_on > first_qualified_on
),

-- Where an account's method spans and its population spans overlap.
population_method_spans as (
    select
        population_spans.population,
        method_spans.method,
        greatest(method_spans.from_day, population_spans.entered_on) as from_day,
        least(method_spans.until_day, population_spans.left_on) as until_day
    from method_spans
    inner join population_spans using (account_id)
    where method_spans.method is not null
),

changes as (
    select population, entered_on as day, 1 as accounts, 0 as totp, 0 as webauthn,
        0 as newly_enrolled
    from population_spans
    union all
    select population, left_on, -1, 0, 0, 0
    from population_spans
    where left_on is not null
    union all
    select population, from_day, 0,
        case when method = 'totp' then 1 else 0 end,
        case when method = 'webauthn' then 1 else 0 end,
        0
    from population_method_spans
    where until_day is null or until_day > from_day
    union all
    select population, until_day, 0,
        case when method = 'totp' then -1 else 0 end,
        case when method = 'webauthn' then -1 else 0 end,
        0
    from population_method_spans
    where until_day > from_day
    union all
    select population_spans.population, first_factors.enrolled_on, 0, 0, 0, 1
    from first_factors
    inner join population_spans using (account_id)
    where first_factors.enrolled_on >= population_spans.entered_on
        and (population_spans.left_on is null
            or first_factors.enrolled_on < population_spans.left_on)
        and first_factors.enrolled_on >= $since::date
),

-- Changes before the first reported day make its starting point.
daily_changes as (
    select
        population,
        greatest(day, $since::date) as day,
        sum(accounts) as accounts,
        sum(totp) as totp,
        sum(webauthn) as webauthn,
        sum(newly_enrolled) as newly_enrolled
    from changes
    where day <= $as_of::date
    group by all
),

daily as (
    select
        populations.population,
        days.day,
        sum(coalesce(daily_changes.accounts, 0)) over running as accounts,
        sum(coalesce(daily_changes.totp, 0)) over running as totp,
        sum(coalesce(daily_changes.webauthn, 0)) over running as webauthn,
        coalesce(daily_changes.newly_enrolled, 0) as newly_enrolled
    from populations
    cross join days
    left join daily_changes
        on daily_changes.population = populations.population
        and daily_changes.day = days.day
    window running as (
        partition by populations.population order by days.day rows unbounded preceding
    )
),

final as (
    select
        day,
        population,
        cast(accounts as bigint) as accounts,
        cast(totp + webauthn as bigint) as with_2fa,
        cast(totp as bigint) as totp,
        cast(webauthn as bigint) as webauthn,
        case when accounts = 0 then 0.0 else (totp + webauthn) / accounts end::double as share,
        cast(newly_enrolled as bigint) as newly_enrolled
    from daily
    order by population <> 'all', population, day
)

select * from final
