-- Dependents of each known package: the distinct other packages whose latest manifest
-- declares it, counted per kind. Reads int_dependency_counts (materialized by
-- rollout.metrics); a package listing itself is not its own dependent, and names
-- with no manifest are left out (both counted by int_dependency_exclusions).
with

counts as (
    select * from int_dependency_counts
),

packages as (
    select package, self_dependency_kinds from stg_manifests
),

final as (
    select
        packages.package,
        counts.dependents - list_contains(packages.self_dependency_kinds, 'prod')::int
            as dependents,
        counts.dev_dependents - list_contains(packages.self_dependency_kinds, 'dev')::int
            as dev_dependents,
        counts.peer_dependents - list_contains(packages.self_dependency_kinds, 'peer')::int
            as peer_dependents
    from counts
    inner join packages on packages.package = counts.dependency
)

select * from final
