-- Maintainer usernames of the selected packages with no registry account: reported,
-- since nobody can be required to enable 2FA through them.
with

selected as (
    select distinct package_key from selected_packages
),

listed as (
    select stg_manifests.package, unnest(stg_manifests.maintainers) as username
    from stg_manifests
    inner join selected on selected.package_key = lower(stg_manifests.package)
),

final as (
    select listed.package, listed.username
    from listed
    anti join registry.accounts as accounts on accounts.username = listed.username
)

select * from final
