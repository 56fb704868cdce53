-- Declared dependents per dependency name, by kind, over every latest manifest: known
-- packages and unknown names alike, self-dependencies included (package_metrics takes
-- them out). Grouping the ~10 edges a package first and matching names to
-- packages after makes the string join 4M rows instead of 40M. rollout.metrics keeps
-- it in table dependency_counts, moved by int_dependency_counts_step as manifests come.
with

edges as (
    select * from stg_dependency_edges
),

final as (
    select
        dependency,
        -- A manifest's dependency map has unique keys, so a row is a distinct dependent.
        count(*) filter (where kind = 'prod') as dependents,
        count(*) filter (where kind = 'dev') as dev_dependents,
        count(*) filter (where kind = 'peer') as peer_dependents,
        count(*) as edges
    from edges
    group by dependency
)

select * from final
