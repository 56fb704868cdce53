-- The latest manifests (stg_manifests) after the files loaded since $counted_file_id,
-- as the rows that replace the kept ones (table latest_manifests) of the packages those
-- files hold. Raw tables only grow, by whole files with rising ids, a file holds a
-- package at most once, and a later file's manifest supersedes an earlier one: the
-- newest of a package among these files is its latest, and no other package's changed.
with

manifests as (
    select * from raw_manifests
),

since as (
    select * from manifests
    where file_id > $counted_file_id
),

final as (
    select
        name as package, lower(name) as package_key, version, maintainers,
        self_dependency_kinds, file_id, ordinal
    from since
    qualify row_number() over (partition by name order by file_id desc) = 1
)

select * from final
