-- Validate the staged downloads file (temp table `incoming`) row by row, then against
-- itself and against what is already loaded. One row per input row, with `problem`
-- (why it is bad, else null) and `duplicate` (a repeat of a row already kept).
create or replace temp table checked as
with

staged as (
    select * from incoming
),

row_checks as (
    select
        *,
        case
            when package is null or package = '' then 'package name is missing'
            when lower(package) in ('node_modules', 'favicon.ico')
                then 'package name ''' || package || ''' is reserved'
            when not regexp_full_match(package, $name_pattern)
                then 'package name ''' || package || ''' is not a valid npm package name'
            when day_text is null then 'day is missing'
            when day is null
                then 'day ''' || day_text || ''' is not a real date (expected YYYY-MM-DD)'
            when day > $today then 'day ' || day || ' is in the future'
            when downloads_text is null then 'downloads is missing'
            when downloads is null
                then 'downloads ''' || downloads_text || ''' is not a whole number'
            when downloads < 0 then 'downloads ' || downloads || ' is negative'
        end as row_problem
    from staged
),

repeated_in_file as (
    select
        package,
        day,
        count(distinct downloads) as distinct_counts,
        min(ordinal) as first_ordinal
    from row_checks
    where row_problem is null
    group by package, day
    having count(*) > 1
),

already_loaded as (
    select
        loaded.package,
        loaded.day,
        any_value(loaded.downloads) as downloads,
        any_value(files.path) as path
    from raw_downloads as loaded
    inner join ingested_files as files using (file_id)
    -- Constant bounds let DuckDB skip row groups of other days (data lands day by day).
    where loaded.day between $min_day and $max_day
      and (loaded.package, loaded.day) in (select package, day from row_checks)
    group by loaded.package, loaded.day
),

final as (
    select
        row_checks.ordinal,
        row_checks.line,
        row_checks.package,
        row_checks.day,
        row_checks.downloads,
        json_object(
            'package', row_checks.package,
            'day', row_checks.day_text,
            'downloads', row_checks.downloads_text
        )::varchar as record,
        case
            when row_checks.row_problem is not null then row_checks.row_problem
            when repeated_in_file.distinct_counts > 1
                then 'conflicting counts for ' || row_checks.package || ' on '
                    || row_checks.day || ' within this file'
            when already_loaded.downloads <> row_checks.downloads
                then 'conflicts with ' || already_loaded.downloads || ' downloads for '
                    || row_checks.package || ' on ' || row_checks.day
                    || ' already loaded from ' || already_loaded.path
        end as problem,
        coalesce(
            repeated_in_file.distinct_counts = 1
            and row_checks.ordinal <> repeated_in_file.first_ordinal, false
        ) or coalesce(already_loaded.downloads = row_checks.downloads, false) as duplicate
    from row_checks
    left join repeated_in_file using (package, day)
    left join already_loaded using (package, day)
)

select * from final
