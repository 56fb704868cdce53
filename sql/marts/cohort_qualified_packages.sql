-- Packages that meet a cohort's rule on $as_of, with the reasons, from that day's
-- package metrics. Criteria combine with OR; a null parameter disables its criterion.
with

metrics as (
    select * from package_metrics_daily
    where as_of = $as_of
),

reasoned as (
    select
        package,
        lower(package) as package_key,
        [
            case when rank_by_dependents <= $top_by_dependents
                then 'top ' || $top_by_dependents || ' by dependents (rank '
                    || rank_by_dependents || ', ' || dependents || ' dependents)' end,
            case when weekly_downloads > $weekly_downloads_gt
                then weekly_downloads || ' weekly downloads (more than '
                    || $weekly_downloads_gt || ')' end,
            case when dependents >= $dependents_gte
                then dependents || ' dependents (at least ' || $dependents_gte || ')' end
        ] as candidate_reasons
    from metrics
),

final as (
    select
        package,
        package_key,
        list_filter(candidate_reasons, lambda reason: reason is not null) as reasons
    from reasoned
    where len(list_filter(candidate_reasons, lambda reason: reason is not null)) > 0
)

select * from final
