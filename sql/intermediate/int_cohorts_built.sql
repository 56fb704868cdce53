-- Every cohort built by the end of $as_of, whether its build selected anyone or not: a
-- cohort no package qualifies for (a high-impact rule nobody meets), or a narrowed one
-- that keeps no account, is still a cohort of the plan, built on its day, with 0
-- accounts; a cohort whose day has not come is none. Made once per adoption build (a
-- temp table, rollout.report.adoption.ADOPTION_INPUTS) and read by the marts that have a
-- row per cohort (adoption_daily, token_readiness).
with

-- The cohort builds that succeeded for a day up to $as_of: registry.plan_runs's step
-- `cohorts <day>` (rollout.core.calendar.cohorts_step), its parameters naming the day
-- and the cohorts it built (rollout.cohorts.build_cohorts).
builds as (
    select
        unnest(from_json(json_extract(parameters, '$.cohorts'), '["VARCHAR"]')) as cohort,
        cast(json_extract_string(parameters, '$.as_of') as date) as built_on
    from registry.plan_runs
    where starts_with(step, 'cohorts ')
        and mode = 'apply'
        and state = 'succeeded'
        and cast(json_extract_string(parameters, '$.as_of') as date) <= $as_of::date
),

-- A cohort with a member by then was built, whatever the runs recorded.
with_members as (
    select cohort, min(first_qualified_on) as built_on
    from int_memberships_known
    group by cohort
),

final as (
    select cohort, min(built_on) as first_built_on
    from (
        select cohort, built_on from builds
        union all
        select cohort, built_on from with_members
    )
    where cohort is not null
    group by cohort
)

select * from final
