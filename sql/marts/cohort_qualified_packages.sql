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
-- By name as published, as the metrics are: two packages whose names differ only in
-- capitals (npm's legacy names) each count their own downloads.
windowed as (
    select package, sum(downloads) as downloads
    from stg_downloads
    where $downloads_gt is not null
        and day < $as_of::date
        and ($downloads_total or day >= $as_of::date - $downloads_days::integer)
    group by package
),

-- weekly_downloads_gt under a plan whose weekly window is not the one the day's metrics
-- were computed with ($weekly_days; null: the metrics' own): summed over its days from
-- the downloads, as the metrics sum theirs (int_download_windows), so a what-if of a
-- plan with a 28-day week counts 28 days, not the metrics' 7.
weekly_window as (
    select package, sum(downloads) as downloads
    from stg_downloads
    where $weekly_downloads_gt is not null
        and $weekly_days is not null
        and day < $as_of::date
        and day >= $as_of::date - $weekly_days::integer
    group by package
),

-- top_share_by_downloads: ranked among every package with metrics that day.
share_window as (
    select package, sum(downloads) as downloads
    from stg_downloads
    where $top_share is not null
        and day < $as_of::date
        and day >= $as_of::date - $share_days::integer
    group by package
),

share_ranked as (
    select
        metrics.package,
        coalesce(share_window.downloads, 0) as downloads,
        rank() over (order by coalesce(share_window.downloads, 0) desc) as share_rank,
        count(*) over () as population
    from metrics
    left join share_window using (package)
    where $top_share is not null
),

-- Each criterion tested once (null: not met, or disabled); only the packages meeting
-- one go on to have their reasons spelled out (a few thousand of 4M at npm scale).
meeting as (
    select
        metrics.* replace (
            case when $weekly_days is null then metrics.weekly_downloads
                else cast(coalesce(weekly_window.downloads, 0) as bigint) end
                as weekly_downloads
        ),
        windowed.downloads as window_downloads,
        share_ranked.downloads as share_downloads,
        share_ranked.share_rank,
        share_ranked.population,
        -- A package with no dependents (no downloads) is not among the top by them:
        -- in a registry with fewer than N that have any, the rank went on by name
        -- (app0, app1, ...), and a share's cut among the many tied at none took them all.
        metrics.rank_by_dependents <= $top_by_dependents
            and metrics.dependents > 0 as by_dependents_rank,
        case when $weekly_days is null then metrics.weekly_downloads
            else coalesce(weekly_window.downloads, 0) end
            > $weekly_downloads_gt as by_weekly_downloads,
        metrics.dependents >= $dependents_gte as by_dependents,
        windowed.downloads > $downloads_gt as by_window_downloads,
        -- $top_share is a decimal, as the plan wrote it: the cut is exact (a double's
        -- 0.07 x 100 was 7.000000000000001, and its ceiling 8).
        share_ranked.share_rank <= ceil($top_share * share_ranked.population)
            and share_ranked.downloads > 0 as by_share,
        $every_maintainer as by_every_maintainer
    from metrics
    left join windowed on windowed.package = metrics.package
    left join weekly_window on weekly_window.package = metrics.package
    left join share_ranked on share_ranked.package = metrics.package
    -- (By the aliases in the same select: DuckDB then pushes the tests on the day's
    -- metrics down into its scan, which a filter over this CTE's output did not.)
    where by_dependents_rank or by_weekly_downloads or by_dependents
        or by_window_downloads or by_share or by_every_maintainer
),

reasoned as (
    select
        package,
        lower(package) as package_key,
        [
            case when by_dependents_rank
                then 'top ' || $top_by_dependents || ' by dependents (rank '
                    || rank_by_dependents || ', ' || dependents
                    || ' dependents)' end,
            case when by_weekly_downloads
                then weekly_downloads || ' weekly downloads (more than '
                    || $weekly_downloads_gt || ')' end,
            case when by_dependents
                then dependents || ' dependents (at least ' || $dependents_gte
                    || ')' end,
            case when by_window_downloads
                then window_downloads || ' downloads '
                    || case when $downloads_total then 'in total'
                        else 'in the ' || $downloads_days || ' days before ' || $as_of end
                    || ' (more than ' || $downloads_gt || ')' end,
            case when by_share
                then 'top ' || $top_share_percent || '% by downloads over '
                    || $share_days || ' days (rank ' || share_rank || ' of '
                    || population || ', ' || share_downloads
                    || ' downloads)' end,
            case when by_every_maintainer then 'every maintainer of any package' end
        ] as candidate_reasons
    from meeting
),

by_name as (
    select
        package,
        package_key,
        list_filter(candidate_reasons, lambda reason: reason is not null) as reasons,
        count(*) over (partition by package_key) as names_of_key
    from reasoned
    where len(list_filter(candidate_reasons, lambda reason: reason is not null)) > 0
),

-- One row a cohort entry: npm's legacy Foo and foo are two packages, each qualifying on
-- its own numbers (above), and one entry of the cohort, keyed by the lower-cased name
-- (registry.cohort_packages), whose maintainers are both's. Both qualifying the same
-- day is one package qualifying (and entering), named by the first name in code-point
-- order, each reason saying which name it is of.
final as (
    select
        min(package) as package,
        package_key,
        flatten(list(
            case when names_of_key = 1 then reasons
                else list_transform(reasons, lambda reason: package || ': ' || reason) end
            order by package
        )) as reasons
    from by_name
    group by package_key
)

select * from final
