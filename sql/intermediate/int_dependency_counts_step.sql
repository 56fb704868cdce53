-- How the manifest files loaded since $counted_file_id move the counts kept for the
-- files up to it (table dependency_counts): one row per dependency name whose counts
-- change, with the change. Raw tables only grow, by whole files with rising ids, and a
-- later file's manifest of a package supersedes the earlier one; so only packages with
-- a manifest in a new file changed:
--   - the edges of their latest manifest among the counted files (what was counted);
--   + the edges of their latest manifest now, all in the new files.
-- rollout.metrics adds the changes to the kept rows in place. A day without a new
-- manifests file reads nothing here (rollout.metrics skips it).
with

manifests as (
    select * from raw_manifests
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

-- The counted edges are spread over every earlier file (at npm scale, a few hundred
-- thousand of 40M rows). Matching on the (file_id, ordinal) columns alone and then
-- reading the names of the matched row ids only (DuckDB pushes the row ids into the
-- scan) reads a fraction of the name column a plain semi join reads whole.
counted_rows as (
    select rowid as row_id
    from raw_dependencies
    semi join counted_before using (file_id, ordinal)
),

signed_edges as (
    select dependency, kind, -1 as sign
    from raw_dependencies
    where rowid in (select row_id from counted_rows)
    union all
    -- The file_id bound lets the scan skip the counted files' row groups.
    select dependencies.dependency, dependencies.kind, 1 as sign
    from raw_dependencies as dependencies
    semi join latest_now using (file_id, ordinal)
    where dependencies.file_id > $counted_file_id
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

-- A name whose edges only moved between kinds changes; one whose edges cancelled
-- out (a manifest loaded again unchanged) does not.
final as (
    select * from deltas
    where dependents <> 0 or dev_dependents <> 0 or peer_dependents <> 0
)

select * from final
