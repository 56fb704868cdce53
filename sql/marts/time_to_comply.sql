-- How many days after each phase's notice its cohort's accounts without 2FA enrolled.
with

phases as (
    select phase, notice_on from plan_phases
),

-- The cohort at each notice, who was without 2FA then and when they enrolled (a temp
-- table made once by build_adoption from the intermediate model).
notice_enrolments as (
    select * from int_notice_enrolments
),

enrolments as (
    select
        notice_enrolments.phase,
        cast(notice_enrolments.enrolled_at as date) - phases.notice_on as days_after_notice
    from notice_enrolments
    inner join phases using (phase)
    where notice_enrolments.enrolled_at is not null
),

final as (
    select phase, days_after_notice, count(*) as accounts
    from enrolments
    group by phase, days_after_notice
    order by phase, days_after_notice
)

select * from final
