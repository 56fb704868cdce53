-- Each phase's accounts sent its notice (a sent phase_notice) by the end of $as_of: the
-- funnel's "notified", and under per-account deadlines what starts an account's
-- deadline (one never sent it is never enforced). Included ({{ }}) by
-- int_funnel_accounts and compliance_funnel.
with

final as (
    select distinct phase, account_id
    from registry.notifications
    where email = 'phase_notice'
        and state = 'sent'
        and coalesce(sent_at, updated_at) < $as_of::date + 1
)

select * from final
