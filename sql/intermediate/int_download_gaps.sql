-- Days of the monthly window for which no download data was loaded at all: a gap
-- the run reports, never silent zeros. `in_weekly_window` marks the days that
-- weekly downloads (and so cohorts) depend on.
with

downloads as (
    select * from stg_downloads
),

window_days as (
    select cast(day as date) as day
    from generate_series(
        cast($as_of as date) - cast($monthly_days as integer),
        cast($as_of as date) - 1,
        interval 1 day
    ) as days(day)
),

loaded_days as (
    select distinct day
    from downloads
    where day between cast($as_of as date) - cast($monthly_days as integer)
        and cast($as_of as date) - 1
),

final as (
    select
        window_days.day,
        window_days.day >= cast($as_of as date) - cast($weekly_days as integer)
            as in_weekly_window
    from window_days
    anti join loaded_days using (day)
)

select * from final
order by day
