-- Maintainer usernames of the selected packages (temp table `selected_manifests`,
-- int_selected_manifests) with no registry account: reported, since nobody can be
-- required to enable 2FA through them.
with

manifests as (
    select package, maintainers from selected_manifests
),

listed as (
    select manifests.package, unnest(manifests.maintainers) as username
    from manifests
),

final as (
    select listed.package, listed.username
    from listed
    anti join registry.accounts as accounts on accounts.username = listed.username
)

select * from final
