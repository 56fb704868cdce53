-- The accounts that can publish the packages in temp table `selected_packages`
-- (package_key): listed maintainers of the package's latest manifest (temp table
-- `selected_manifests`, int_selected_manifests), and members of org teams with write
-- access to it. One row an account, with its 2FA status, last
-- login and the packages (and routes) that put it there.
with

selected as (
    select distinct package_key from selected_packages
),

manifests as (
    select package, package_key, maintainers from selected_manifests
),

accounts as (
    select * from registry.accounts
),

listed_maintainers as (
    select manifests.package, unnest(manifests.maintainers) as username
    from manifests
),

via_maintainer as (
    select accounts.id as account_id, listed_maintainers.package, 'maintainer' as via
    from listed_maintainers
    inner join accounts on accounts.username = listed_maintainers.username
),

via_team as (
    select
        team_members.account_id,
        team_packages.package_name as package,
        'team ' || orgs.name || '/' || teams.name as via
    from registry.team_packages as team_packages
    inner join selected on selected.package_key = lower(team_packages.package_name)
    inner join registry.teams as teams on teams.id = team_packages.team_id
    inner join registry.orgs as orgs on orgs.id = teams.org_id
    inner join registry.team_members as team_members on team_members.team_id = teams.id
    -- Only current members of the org can publish through its teams.
    inner join registry.org_members as org_members
        on org_members.org_id = orgs.id
        and org_members.account_id = team_members.account_id
        and org_members.removed_at is null
    where team_packages.permission = 'write'
),

routes as (
    select * from via_maintainer
    union all
    select * from via_team
),

-- 2FA as $day_end (the end of the day judged) found it: a factor added later does not
-- count, one removed later still does. For today's build, every factor held now.
factors as (
    select account_id, list(distinct kind order by kind) as methods
    from registry.tfa_factors
    where created_at < $day_end and (removed_at is null or removed_at >= $day_end)
    group by account_id
),

final as (
    select
        accounts.id as account_id,
        accounts.username,
        case
            when factors.methods is null then 'none'
            when list_contains(factors.methods, 'webauthn') then 'webauthn'
            else 'totp'
        end as tfa_status,
        coalesce(factors.methods, []::varchar[]) as tfa_methods,
        accounts.last_login_at,
        list(distinct routes.package order by routes.package) as packages,
        list(distinct routes.via order by routes.via) as via
    from routes
    inner join accounts on accounts.id = routes.account_id
    left join factors on factors.account_id = accounts.id
    group by all
)

select * from final
