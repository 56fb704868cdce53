-- How far each plan phase's warnings (its notice and its reminders) got by the end of
-- $as_of: who was sent one, who one reached (SendGrid says delivered, or a spam report,
-- which only a delivered email gets), and why the others were never reached. The rules
-- of rollout/notify/reach.py, which phase preview and phase enforce apply to the
-- registry as it is now, read as of $as_of. Each account counts once per column; an
-- account never reached counts under the most telling of its warnings (a bounce, then
-- a drop, then a suppressed address, then a skip as too late), as reach.py's why does.
-- An account the registry deleted since counts only as deleted.
with

phases as (
    select phase, cohort from plan_phases
),

requirements as (
    select * from ({{ int_phase_requirements_known }})
),

-- The phase's warnings queued by the end of $as_of, each as it stood then: sent by
-- then (sent_at), skipped by then (updated_at: when the skip was recorded), and its
-- delivery state only if the event that decided it came by then.
warnings as (
    select
        notifications.phase,
        notifications.account_id,
        notifications.state = 'sent'
        and coalesce(notifications.sent_at, notifications.updated_at) < $as_of::date + 1
            as sent,
        notifications.state = 'skipped'
        and notifications.updated_at < $as_of::date + 1
        and notifications.skip_reason like 'suppressed%' as skipped_suppressed,
        notifications.state = 'skipped'
        and notifications.updated_at < $as_of::date + 1
        and notifications.skip_reason = 'unverified email' as skipped_unverified,
        -- Tried, and never sent: the send came after its last day (an outage, a late
        -- retry: rollout.notify.outbox.TOO_LATE). Not an account nobody wrote to.
        notifications.state = 'skipped'
        and notifications.updated_at < $as_of::date + 1
        and notifications.skip_reason = 'too late' as skipped_too_late,
        -- A warning skipped by then for a reason that says nothing of reach (the
        -- account already complied, the notice was withdrawn when the deadline moved)
        -- does not make the account one the phase meant to warn; a suppressed or
        -- unverified address does, and so does a skip as too late (the send found the
        -- account verified, not suppressed and short of the phase before it found the
        -- day gone). Skipped only later, it was still queued then. A skip as account
        -- deleted (the send found the account gone) was meant to warn it too: it counts
        -- as deleted, as does any account of the phase the registry no longer has.
        not (
            notifications.state = 'skipped'
            and notifications.updated_at < $as_of::date + 1
            and coalesce(notifications.skip_reason, '') not like 'suppressed%'
            and coalesce(notifications.skip_reason, '')
            not in ('unverified email', 'too late', 'account deleted')
        ) as meant_to_warn,
        case
            when notifications.delivery_at < $as_of::date + 1 then notifications.delivery
        end as delivery
    from registry.notifications as notifications
    inner join phases using (phase)
    where notifications.email in ('phase_notice', 'reminder')
        and notifications.created_at < $as_of::date + 1
),

account_warnings as (
    select
        phase,
        account_id,
        bool_or(sent) as notified,
        bool_or(sent and delivery in ('delivered', 'spam_report')) as reached,
        bool_or(sent and delivery = 'bounced') as bounced,
        bool_or(sent and delivery = 'dropped') as dropped,
        bool_or(skipped_suppressed) as suppressed,
        bool_or(skipped_unverified) as unverified,
        bool_or(skipped_too_late) as too_late,
        bool_or(meant_to_warn) as meant_to_warn
    from warnings
    group by phase, account_id
),

planned_requirements as (
    select requirements.phase, requirements.account_id
    from requirements
    inner join phases using (phase)
),

-- The phase's accounts: every account with a warning of the phase meant to reach it
-- (in any state but skipped for a reason other than its address or too late), and every
-- account the phase requires (applies to) (one enforced without any warning was never
-- sent a notice).
phase_accounts as (
    select phase, account_id from account_warnings where meant_to_warn
    union
    select phase, account_id from planned_requirements
),

reach as (
    select
        phase_accounts.phase,
        phase_accounts.account_id,
        coalesce(account_warnings.notified, false) as notified,
        coalesce(account_warnings.reached, false) as reached,
        coalesce(account_warnings.bounced, false) as bounced,
        coalesce(account_warnings.dropped, false) as dropped,
        coalesce(account_warnings.suppressed, false) as suppressed,
        coalesce(account_warnings.unverified, false) as unverified,
        coalesce(account_warnings.too_late, false) as too_late,
        planned_requirements.account_id is not null as enforced
    from phase_accounts
    left join account_warnings using (phase, account_id)
    left join planned_requirements using (phase, account_id)
    -- Of accounts the registry still has: the outbox keeps the warnings of deleted ones
    -- (revision 0021). No one can be reached there any more, nor is anyone locked out:
    -- they count apart (deleted), in no other column, as phase preview, which reads
    -- the accounts there are, leaves them out.
    semi join registry.accounts as accounts on accounts.id = phase_accounts.account_id
),

deleted_accounts as (
    select phase_accounts.phase, count(*) as deleted
    from phase_accounts
    anti join registry.accounts as accounts on accounts.id = phase_accounts.account_id
    group by phase_accounts.phase
),

reach_counts as (
    select
        reach.phase,
        count(*) filter (where reach.notified) as notified,
        count(*) filter (where reach.reached) as delivered,
        count(*) filter (where not reach.reached and reach.bounced) as bounced,
        count(*) filter (
            where not reach.reached and reach.dropped and not reach.bounced
        ) as dropped,
        count(*) filter (
            where not reach.reached
            and reach.suppressed
            and not reach.bounced
            and not reach.dropped
        ) as suppressed,
        -- After every skip for its address (suppressed or unverified), as reach.py
        -- ranks them: a skip as too late is final, a failed send may be retried.
        count(*) filter (
            where not reach.reached
            and reach.too_late
            and not reach.bounced
            and not reach.dropped
            and not reach.suppressed
            and not reach.unverified
        ) as too_late,
        count(*) filter (where not reach.reached) as never_reached,
        count(*) filter (where not reach.reached and reach.enforced) as never_reached_enforced
    from reach
    group by reach.phase
),

final as (
    select
        phases.phase,
        phases.cohort,
        coalesce(reach_counts.notified, 0) as notified,
        coalesce(reach_counts.delivered, 0) as delivered,
        coalesce(reach_counts.bounced, 0) as bounced,
        coalesce(reach_counts.dropped, 0) as dropped,
        coalesce(reach_counts.suppressed, 0) as suppressed,
        coalesce(reach_counts.too_late, 0) as too_late,
        coalesce(reach_counts.never_reached, 0) as never_reached,
        coalesce(reach_counts.never_reached_enforced, 0) as never_reached_enforced,
        coalesce(deleted_accounts.deleted, 0) as deleted
    from phases
    left join reach_counts using (phase)
    left join deleted_accounts using (phase)
    order by phases.phase
)

select * from final
