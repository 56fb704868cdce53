-- Packages that meet a cohort's rule on $as_of, with the reasons, from that day's
-- package metrics and, for the rules over other windows, the daily downloads.
-- Criteria combine with OR; a null parameter (or false) disables its criterion.
-- A window of N days is the N full days before $as_of, as the metrics' weekly one.
with

metrics as (
    select * from package_metrics_daily
    where as_of = $as_of
),

-- downloads_gt: over $downloads_days days, or every day loaded ($downloads_total).
windowed as (
    select lower(package) as package_key, sum(downloads) as downloads
    from stg_downloads
    where $downloads_gt is not null
        and day < $as_of::date
        and ($downloads_total or day >= $as_of::date - $downloads_days::integer)
    group by lower(package)
),

-- top_share_by_downloads: ranked among every package with metrics that day.
share_window as (
    select lower(package) as package_key, sum(downloads) as downloads
    from stg_downloads
    where $top_share is not null
        and day < $as_of::date
        and day >= $as_of::date - $share_days::integer
    group by lower(package)
),

share_ranked as (
    select
        lower(metrics.package) as package_key,
        coalesce(share_window.downloads, 0) as downloads,
        rank() over (order by coalesce(share_window.downloads, 0) desc) as share_rank,
        count(*) over () as population
    from metrics
    left join share_window on share_window.package_key = lower(metrics.package)
    where $top_share is not null
),

-- The packages meeting any criterion, the same tests the reasons below make: only
-- they get the reasons spelled out (a few thousand of 4M packages at npm scale).
meeting as (
    select
        metrics.*,
        windowed.downloads as window_downloads,
        share_ranked.downloads as share_downloads,
        share_ranked.share_rank,
        share_ranked.population
    from metrics
    left join windowed on windowed.package_key = lower(metrics.package)
    left join share_ranked on share_ranked.package_key = lower(metrics.package)
    where metrics.rank_by_dependents <= $top_by_dependents
        or metrics.weekly_downloads > $weekly_downloads_gt
        or metrics.dependents >= $dependents_gte
        or windowed.downloads > $downloads_gt
        or share_ranked.share_rank <= ceil($top_share * share_ranked.population)
        or $every_maintainer
),

reasoned as (
    select
        package,
        lower(package) as package_key,
        [
            case when rank_by_dependents <= $top_by_dependents
                then 'top ' || $top_by_dependents || ' by dependents (rank '
                    || rank_by_dependents || ', ' || dependents
                    || ' dependents)' end,
            case when weekly_downloads > $weekly_downloads_gt
                then weekly_downloads || ' weekly downloads (more than '
                    || $weekly_downloads_gt || ')' end,
            case when dependents >= $dependents_gte
                then dependents || ' dependents (at least ' || $dependents_gte
                    || ')' end,
            case when window_downloads > $downloads_gt
                then window_downloads || ' downloads '
                    || case when $downloads_total then 'in total'
                        else 'in the ' || $downloads_days || ' days before ' || $as_of end
                    || ' (more than ' || $downloads_gt || ')' end,
            case when share_rank <= ceil($top_share * population)
                then 'top ' || round($top_share * 100, 4) || '% by downloads over '
                    || $share_days || ' days (rank ' || share_rank || ' of '
                    || population || ', ' || share_downloads
                    || ' downloads)' end,
            case when $every_maintainer then 'every maintainer of any package' end
        ] as candidate_reasons
    from meeting
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
