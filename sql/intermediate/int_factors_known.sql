-- 2FA factors as known on $as_of: created by its end, a removal after it not known
-- yet. A factor is active on day D when active_from <= D < active_until (null: still
-- active on $as_of). Included ({{ }}) by the adoption models that follow factors.
with

final as (
    select
        account_id,
        kind,
        created_at,
        cast(created_at as date) as active_from,
        case when removed_at < $as_of::date + 1 then cast(removed_at as date) end as active_until
    from registry.tfa_factors
    where created_at < $as_of::date + 1
)

select * from final
