-- The accounts that can publish the packages in temp table `selected_packages`
-- (package_key): listed maintainers of the package's latest manifest (temp table
-- `selected_manifests`, int_selected_manifests), and members of org teams with write
-- access to it. One row an account, with its 2FA status, last
-- login and the packages (and routes) that put it there.
-- The rule's account filters narrow them (AND): $active_days (published or logged in,
-- as $active_by lists, in the full days before $as_of) and $orgs (current members of
-- one of them); an account already in cohort $cohort stays (membership is sticky).
-- A null $active_days and an empty $orgs filter nothing.
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

factors as (
    select account_id, list(distinct kind order by kind) as methods
    from registry.tfa_factors
    where removed_at is null
    group by account_id
),

active as (
    select distinct username
    from stg_publishes
    where list_contains($active_by, 'published')
        and day < $as_of::date and day >= $as_of::date - $active_days::integer
    union
    select distinct username
    from stg_logins
    where list_contains($active_by, 'logged_in')
        and outcome = 'success'
        and day < $as_of::date and day >= $as_of::date - $active_days::integer
),

in_orgs as (
    select distinct org_members.account_id
    from registry.org_members as org_members
    inner join registry.orgs as orgs on orgs.id = org_members.org_id
    where org_members.removed_at is null and list_contains($orgs, orgs.name)
),

already_in as (
    select account_id
    from registry.cohort_memberships
    where cohort = $cohort and left_on is null
),

eligible as (
    select accounts.id as account_id
    from accounts
    where (
        $active_days is null
        or accounts.username in (select username from active)
        or accounts.id in (select account_id from already_in)
    )
    and (
        len($orgs) = 0
        or accounts.id in (select account_id from in_orgs)
        or accounts.id in (select account_id from already_in)
    )
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
    inner join eligible on eligible.account_id = accounts.id
    left join factors on factors.account_id = accounts.id
    group by all
)

select * from final
