-- Dependencies declared by each package's latest manifest (kind: prod, dev, peer).
create or replace view stg_dependencies as
with

dependencies as (
    select * from raw_dependencies
),

latest as (
    select package, file_id from stg_manifests
),

final as (
    select dependencies.package, dependencies.dependency, dependencies.range, dependencies.kind
    from dependencies
    inner join latest using (package, file_id)
)

select * from final
