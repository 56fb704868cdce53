-- int_dependency_exclusions after the manifest files loaded since $counted_file_id,
-- from what the counts kept for the files up to it left out ($unknown_dependencies,
-- $unknown_packages), read before rollout.metrics adds the changes of
-- int_dependency_counts_step (table dependency_changes) to the kept counts. Only a
-- name whose counts change, or a package with its first manifest in the new files,
-- can enter or leave the names with no manifest: matching those few against the
-- millions of names, rather than every name depended on against every package, is
-- what the step saves.
with

changes as (
    select * from dependency_changes
),

kept as (
    select * from dependency_counts
),

manifests as (
    select * from raw_manifests
),

packages as (
    select package, self_dependency_kinds from stg_manifests
),

since as (
    select distinct name from manifests where file_id > $counted_file_id
),

-- Names that may have been depended on with no manifest until now.
first_published as (
    select name from since
    except
    select name
    from manifests
    semi join since using (name)
    where manifests.file_id <= $counted_file_id
),

touched as (
    select dependency as name from changes
    union
    select name from first_published
),

-- Semi joins, so the few touched names are hashed and the millions only probe.
kept_touched as (
    select dependency as name, edges
    from kept
    semi join touched on touched.name = kept.dependency
),

known as (
    select package as name
    from packages
    semi join touched on touched.name = packages.package
),

moved as (
    select
        coalesce(kept_touched.edges, 0) as edges_before,
        coalesce(kept_touched.edges, 0) + coalesce(changes.edges, 0) as edges_after,
        known.name is not null as known_after,
        -- A package's manifest never goes: known before unless first published now.
        known.name is not null and first_published.name is null as known_before
    from touched
    left join kept_touched using (name)
    left join changes on changes.dependency = touched.name
    left join known using (name)
    left join first_published using (name)
),

final as (
    select
        (select coalesce(sum(len(self_dependency_kinds)), 0) from packages)
            as self_dependencies,
        $unknown_dependencies
            + coalesce(sum(edges_after) filter (where not known_after), 0)
            - coalesce(sum(edges_before) filter (where not known_before), 0)
            as unknown_dependencies,
        $unknown_packages
            + count(*) filter (where not known_after and edges_after <> 0)
            - count(*) filter (where not known_before and edges_before <> 0)
            as unknown_packages
    from moved
)

select * from final
