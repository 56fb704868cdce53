-- Reach of every known package on $as_of: weekly and 30-day downloads, dependents
-- by kind, and ranks with a deterministic tie-break on the name. One row a package.
with

packages as (
    select package from stg_manifests
),

windows as (
    select * from ({{ int_download_windows }})
),

dependents as (
    select * from ({{ int_package_dependents }})
),

joined as (
    select
        packages.package,
        coalesce(windows.weekly_downloads, 0) as weekly_downloads,
        coalesce(windows.monthly_downloads, 0) as monthly_downloads,
        coalesce(dependents.dependents, 0) as dependents,
        coalesce(dependents.dev_dependents, 0) as dev_dependents,
        coalesce(dependents.peer_dependents, 0) as peer_dependents
    from packages
    left join windows using (package)
    left join dependents using (package)
),

-- Both ranks break ties by name. Sorting the names once and then the two ranks on
-- integers is the same order, and a second faster at npm scale than two sorts on
-- (count, name).
name_ordered as (
    select *, row_number() over (order by package) as name_order
    from joined
),

final as (
    select
        cast($as_of as date) as as_of,
        package,
        weekly_downloads,
        monthly_downloads,
        dependents,
        dev_dependents,
        peer_dependents,
        row_number() over (order by dependents desc, name_order) as rank_by_dependents,
        row_number() over (order by weekly_downloads desc, name_order) as rank_by_downloads
    from name_ordered
)

select * from final
