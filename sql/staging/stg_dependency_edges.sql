-- The dependencies of the latest manifests without the dependent's name: what the
-- metrics count. Matching on (file_id, ordinal) integers instead of carrying names
-- keeps a 40M-row join cheap; stg_dependencies has the names for people.
create or replace view stg_dependency_edges as
with

dependencies as (
    select * from raw_dependencies
),

latest as (
    select file_id, ordinal from stg_manifests
),

final as (
    select dependencies.dependency, dependencies.kind
    from dependencies
    semi join latest using (file_id, ordinal)
)

select * from final;

comment on view stg_dependency_edges is
    'The dependencies of the latest manifests without the dependent''s name: what the metrics count (stg_dependencies has the names).';
