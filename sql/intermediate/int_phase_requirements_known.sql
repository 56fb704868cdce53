-- Which accounts each phase applies to (requires) at the end of $as_of, and since when:
-- tfa_required for an account whose 2FA a require_2fa phase requires, phase_required
-- for any other the phase acts on (a token, banner or TOTP-closing phase's). Read from
-- the audit ledger, not registry.phase_requirements: that table holds only the
-- present, and a report may be of a past day. Included ({{ }}) by int_funnel_accounts,
-- compliance_funnel and notice_reach.
with

events as (
    select id, phase, account_id, action, created_at
    from registry.actions
    where action in (
            'tfa_required', 'phase_required', 'tfa_required_withdrawn', 'tfa_required_cleared'
        )
        and phase is not null
        and account_id is not null
        and created_at < $as_of::date + 1
),

-- A rollback ends the requirement: tfa_required_withdrawn, or tfa_required_cleared on
-- its own, which is all that rollbacks wrote before phase_requirements existed. Which
-- row came last is by created_at, then by id: a phase can be rolled back and enforced
-- again at one instant (the demo's simulated clock, a coarse one), and the ledger's ids
-- grow in the order its rows were written (it is append-only, and a phase's runs write
-- one at a time, under the enforce lock).
last_withdrawals as (
    select
        phase,
        account_id,
        max(created_at) as withdrawn_at,
        arg_max(id, (created_at, id)) as withdrawn_id
    from events
    where action in ('tfa_required_withdrawn', 'tfa_required_cleared')
    group by phase, account_id
),

-- The requirement in force began with the first of its rows after the last rollback
-- (a phase enforced, rolled back and enforced again requires from the second time).
requirements as (
    select events.phase, events.account_id, min(events.created_at) as required_at
    from events
    left join last_withdrawals using (phase, account_id)
    where events.action in ('tfa_required', 'phase_required')
        and (
            last_withdrawals.withdrawn_at is null
            or events.created_at > last_withdrawals.withdrawn_at
            or (
                events.created_at = last_withdrawals.withdrawn_at
                and events.id > last_withdrawals.withdrawn_id
            )
        )
    group by events.phase, events.account_id
),

final as (
    select phase, account_id, required_at from requirements
)

select * from final
