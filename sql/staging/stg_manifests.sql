-- The latest manifest of each package: the newest loaded file that holds it wins.
-- package_key is the lower-cased name, the key cohorts use.
create or replace view stg_manifests as
with

manifests as (
    select * from raw_manifests
),

ranked as (
    select
        *,
        row_number() over (partition by name order by file_id desc) as recency
    from manifests
),

final as (
    select
        name as package, lower(name) as package_key, version, maintainers,
        self_dependency_kinds, file_id, ordinal
    from ranked
    where recency = 1
)

select * from final;

comment on view stg_manifests is
    'The latest manifest of each package (the newest loaded file that holds it), package_key its lower-cased name.';
