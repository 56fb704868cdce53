-- Cohort memberships as known on $as_of: those that began by then, with a departure
-- after $as_of not known yet. Included ({{ }}) by the adoption models that follow
-- cohorts over days.
with

final as (
    select
        cohort,
        account_id,
        first_qualified_on,
        case when left_on <= $as_of::date then left_on end as left_on
    from registry.cohort_memberships
    where first_qualified_on <= $as_of::date
)

select * from final
