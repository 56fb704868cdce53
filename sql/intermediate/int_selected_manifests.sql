-- The latest manifest of each package in temp table `selected_packages`: its name
-- as published and its listed maintainers. Read by both account models
-- (cohort_accounts, unresolved_maintainers), so made once per selection.
with

selected as (
    select distinct package_key from selected_packages
),

manifests as (
    select package, package_key, maintainers from stg_manifests
),

final as (
    select manifests.package, manifests.package_key, manifests.maintainers
    from manifests
    inner join selected using (package_key)
)

select * from final
