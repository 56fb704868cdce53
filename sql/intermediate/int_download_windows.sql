-- Downloads per package over the windows that end the day before $as_of:
-- weekly = the $weekly_days full UTC days before it, monthly = the $monthly_days days.
-- Packages with no downloads in the window have no row (the mart fills zeros).
with

downloads as (
    select * from stg_downloads
),

in_window as (
    select package, day, downloads
    from downloads
    where day between cast($as_of as date) - cast($monthly_days as integer)
        and cast($as_of as date) - 1
),

final as (
    select
        package,
        sum(downloads) filter (
            where day >= cast($as_of as date) - cast($weekly_days as integer)
        ) as weekly_downloads,
        sum(downloads) as monthly_downloads
    from in_window
    group by package
)

select * from final
