-- Each phase's accounts sent its notice (a sent phase_notice) by the end of $as_of, and
-- when: the funnel's "notified", and under per-account deadlines what starts an
-- account's deadline (one never sent it is never enforced). Included ({{ }}) by
-- int_funnel_accounts and compliance_funnel.
with

final as (
    select phase, account_id, min(sent_at) as sent_at
    from registry.notifications
    where email = 'phase_notice'
        and state = 'sent'
        and coalesce(sent_at, updated_at) < $as_of::date + 1
    group by phase, account_id
)

select * from final
