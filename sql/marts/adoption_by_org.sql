-- 2FA among each org's members and owners on $as_of, and whether the org enforces it.
with

orgs as (
    select
        id as org_id,
        name as org,
        case when tfa_enforced_at < $as_of::date + 1 then tfa_enforced_at end as tfa_enforced_at
    from registry.orgs
    where created_at < $as_of::date + 1
),

members as (
    select org_id, account_id, role
    from registry.org_members
    where joined_at < $as_of::date + 1
        and (removed_at is null or removed_at >= $as_of::date + 1)
),

factors as (
    select account_id
    from registry.tfa_factors
    where created_at < $as_of::date + 1
        and (removed_at is null or removed_at >= $as_of::date + 1)
),

with_2fa as (
    select distinct account_id from factors
),

member_status as (
    select
        members.org_id,
        members.account_id,
        members.role = 'owner' as is_owner,
        with_2fa.account_id is not null as has_2fa
    from members
    left join with_2fa using (account_id)
),

counts as (
    select
        org_id,
        count(*) as members,
        count(*) filter (where has_2fa) as with_2fa,
        count(*) filter (where is_owner) as owners,
        count(*) filter (where is_owner and has_2fa) as owners_with_2fa
    from member_status
    group by org_id
),

final as (
    select
        orgs.org,
        coalesce(counts.members, 0) as members,
        coalesce(counts.with_2fa, 0) as with_2fa,
        case
            when coalesce(counts.members, 0) = 0 then 0.0
            else counts.with_2fa / counts.members
        end::double as share,
        coalesce(counts.owners, 0) as owners,
        coalesce(counts.owners_with_2fa, 0) as owners_with_2fa,
        orgs.tfa_enforced_at
    from orgs
    left join counts using (org_id)
    order by orgs.org
)

select * from final
