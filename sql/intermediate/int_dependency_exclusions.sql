-- What the dependents count leaves out, for the run's report.
with

dependencies as (
    select * from stg_dependencies
),

packages as (
    select package from stg_manifests
),

final as (
    select
        count(*) filter (where dependencies.dependency = dependencies.package)
            as self_dependencies,
        count(*) filter (
            where dependencies.dependency <> dependencies.package and packages.package is null
        ) as unknown_dependencies,
        count(distinct dependencies.dependency) filter (where packages.package is null)
            as unknown_packages
    from dependencies
    left join packages on packages.package = dependencies.dependency
)

select * from final
