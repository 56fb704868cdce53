-- int_download_windows for $as_of, from the windows kept for the earlier day
-- $previous ($previous <= $as_of) counting the download files up to $counted_file_id.
-- Raw tables only grow, by whole files with rising ids, so the windows move by:
--   + rows of days entering them (every file), and rows of files loaded since, of
--     days in both (a late file);
--   - rows of days leaving them that were counted (files up to $counted_file_id).
-- Each part is a range of days or of file ids, which the zone maps of raw_downloads
-- (appended file by file) answer without reading the rest: a new day reads two days
-- of rows and the new files, not the 30 days.
with

kept as (
    select * from download_windows
),

downloads as (
    select * from raw_downloads
),

bounds as (
    select
        cast($as_of as date) as day_after,
        cast($previous as date) as day_after_before,
        cast($weekly_days as integer) as weekly,
        cast($monthly_days as integer) as monthly
),

-- Every row whose part in either window differs between the two days: what came in
-- since (new files), and the days entering and leaving either window.
changed as (
    select package, day, downloads, true as new_file
    from downloads
    where file_id > $counted_file_id
    union all
    select package, day, downloads, false
    from downloads
    where file_id <= $counted_file_id
      and (
        day between cast($previous as date) - cast($monthly_days as integer)
            and cast($as_of as date) - cast($monthly_days as integer) - 1
        or day between cast($previous as date) - cast($weekly_days as integer)
            and cast($as_of as date) - cast($weekly_days as integer) - 1
        or day between cast($previous as date) and cast($as_of as date) - 1
      )
),

-- A row's count in each window, now less before (before: only if it was counted).
deltas as (
    select
        package,
        sum(
            downloads * (
                (day between day_after - weekly and day_after - 1)::int
                - (not new_file and day between day_after_before - weekly
                    and day_after_before - 1)::int
            )
        ) as weekly_delta,
        sum(
            downloads * (
                (day between day_after - monthly and day_after - 1)::int
                - (not new_file and day between day_after_before - monthly
                    and day_after_before - 1)::int
            )
        ) as monthly_delta
    from changed, bounds
    group by package
),

final as (
    select
        package,
        coalesce(kept.weekly_downloads, 0) + coalesce(deltas.weekly_delta, 0)
            as weekly_downloads,
        coalesce(kept.monthly_downloads, 0) + coalesce(deltas.monthly_delta, 0)
            as monthly_downloads
    from kept
    full outer join deltas using (package)
)

-- Zero sums stay: rollout.metrics keeps only the packages with a non-zero one.
select * from final
