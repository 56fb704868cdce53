-- The accounts a cohort rule's account filters let in (AND with each other):
-- $active_days (published or logged in successfully, as $active_by lists, in the full
-- days before $as_of) and $orgs (current members of one of them). An account already
-- in cohort $cohort passes both (membership is sticky). A null $active_days or an empty
-- $orgs lets everyone through that filter. Run only for rules that filter
-- (rollout.cohorts.accounts_query), over marts/cohort_accounts.
with

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

final as (
    select accounts.id as account_id
    from registry.accounts as accounts
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
)

select * from final
