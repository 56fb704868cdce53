-- Dependents of each known package: the distinct packages whose latest manifest
-- declares it, counted per kind. Self-dependencies and dependencies on packages the
-- registry does not know are left out (and counted by int_dependency_exclusions).
with

dependencies as (
    select * from stg_dependencies
),

packages as (
    select package from stg_manifests
),

counted as (
    select dependencies.package as dependent, dependencies.dependency, dependencies.kind
    from dependencies
    inner join packages on packages.package = dependencies.dependency
    where dependencies.dependency <> dependencies.package
),

final as (
    select
        dependency as package,
        -- A manifest's dependency map has unique keys, so a row is a distinct dependent.
        count(*) filter (where kind = 'prod') as dependents,
        count(*) filter (where kind = 'dev') as dev_dependents,
        count(*) filter (where kind = 'peer') as peer_dependents
    from counted
    group by dependency
)

select * from final
