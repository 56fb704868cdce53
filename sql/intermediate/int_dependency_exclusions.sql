-- What the dependents counts leave out, for the run's report: self-dependencies, and
-- dependencies on names the registry has no manifest for. Reads the counts rollout.metrics
-- keeps (dependency_counts: the int_dependency_counts model, or moved by its step).
with

counts as (
    select * from dependency_counts
),

packages as (
    select package, self_dependency_kinds from stg_manifests
),

unknown as (
    select counts.dependency, counts.edges
    from counts
    anti join packages on packages.package = counts.dependency
),

final as (
    select
        (select coalesce(sum(len(self_dependency_kinds)), 0) from packages)
            as self_dependencies,
        (select coalesce(sum(edges), 0) from unknown) as unknown_dependencies,
        (select count(*) from unknown) as unknown_packages
)

select * from final
