-- int_dependency_counts after the manifest files loaded since $counted_file_id, from
-- the counts kept for the files up to it (table dependency_counts). Raw tables only
-- grow, by whole files with rising ids, and a later file's manifest of a package
-- supersedes the earlier one; so only packages with a manifest in a new file changed:
--   - the edges of their latest manifest among the counted files (what was counted);
--   + the edges of their latest manifest now.
-- A day without a new manifests file reads nothing here (rollout.metrics skips it).
with

kept as (
    select * from dependency_counts
),

manifests as (
    select * from raw_manifests
),

dependencies as (
    select * from raw_dependencies
),

latest as (
    select package, file_id, ordinal from stg_manifests
),

changed as (
    select distinct name from manifests where file_id > $counted_file_id
),

counted_before as (
    select manifests.file_id, manifests.ordinal
    from manifests
    semi join changed using (name)
    where manifests.file_id <= $counted_file_id
    qualify row_number() over (partition by manifests.name order by manifests.file_id desc) = 1
),

latest_now as (
    select latest.file_id, latest.ordinal
    from latest
    semi join changed on changed.name = latest.package
),

signed_edges as (
    select dependencies.dependency, dependencies.kind, -1 as sign
    from dependencies
    semi join counted_before using (file_id, ordinal)
    union all
    select dependencies.dependency, dependencies.kind, 1 as sign
    from dependencies
    semi join latest_now using (file_id, ordinal)
),

deltas as (
    select
        dependency,
        coalesce(sum(sign) filter (where kind = 'prod'), 0) as dependents,
        coalesce(sum(sign) filter (where kind = 'dev'), 0) as dev_dependents,
        coalesce(sum(sign) filter (where kind = 'peer'), 0) as peer_dependents,
        sum(sign) as edges
    from signed_edges
    group by dependency
),

final as (
    select
        dependency,
        coalesce(kept.dependents, 0) + coalesce(deltas.dependents, 0) as dependents,
        coalesce(kept.dev_dependents, 0) + coalesce(deltas.dev_dependents, 0)
            as dev_dependents,
        coalesce(kept.peer_dependents, 0) + coalesce(deltas.peer_dependents, 0)
            as peer_dependents,
        coalesce(kept.edges, 0) + coalesce(deltas.edges, 0) as edges
    from kept
    full outer join deltas using (dependency)
)

-- Names no longer depended on stay at zero edges: rollout.metrics keeps only the
-- names with edges, as the full model has.
select * from final
