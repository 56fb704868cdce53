-- Dependencies declared by each package's latest manifest (kind: prod, dev, peer).
create or replace view stg_dependencies as
with

dependencies as (
    select * from raw_dependencies
),

latest as (
    select package, file_id, ordinal from stg_manifests
),

final as (
    select latest.package, dependencies.dependency, dependencies.range, dependencies.kind
    from dependencies
    inner join latest using (file_id, ordinal)
)

select * from final;

comment on view stg_dependencies is
    'The dependencies declared by each package''s latest manifest, by kind (prod, dev, peer).';
