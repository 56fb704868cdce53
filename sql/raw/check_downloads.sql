-- Validate the staged downloads file (temp table `incoming`): row by row, against
-- itself and against what is already loaded. Keeps only the rows that are bad
-- (`problem`) or repeat a row already kept (`duplicate`); the rest load as they are.
-- Written for 4M-row daily files: each CTE is one pass, never a copy of the file.
create or replace temp table flagged as
with

staged as not materialized (
    select * from incoming
),

row_problems as (
    select
        ordinal,
        case
            when package_raw is not null
                then 'package name ' || package_raw || ' is not a string'
            when package is null or package = '' then 'package name is missing'
            when lower(package) in ('node_modules', 'favicon.ico')
                then 'package name '''
                    || replace(replace(package, '\', '\\'), '''', '\''')
                    || ''' is reserved'
            when not regexp_full_match(package, $name_pattern)
                then 'package name '''
                    || replace(replace(package, '\', '\\'), '''', '\''')
                    || ''' is not a valid npm package name'
            when day is null and day_raw is null then 'day is missing'
            when day is null
                then 'day '''
                    || replace(replace(cast(day_raw as varchar), '\', '\\'), '''', '\''')
                    || ''' is not a real date (expected YYYY-MM-DD)'
            when day > $today then 'day ' || day || ' is in the future'
            when day < $earliest then 'day ' || day || ' is before 2000'
            when downloads is null and downloads_raw is null then 'downloads is missing'
            -- A whole count (rollout.core.counts: digits, 5.0 too) that is no BIGINT.
            when downloads is null
                and regexp_full_match(trim(cast(downloads_raw as varchar)), $whole_pattern)
                then 'downloads ' || trim(cast(downloads_raw as varchar))
                    || ' is out of range (at most 9223372036854775807)'
            when downloads is null
                and regexp_full_match(trim(cast(downloads_raw as varchar)), $exponent_pattern)
                then 'downloads '''
                    || replace(replace(cast(downloads_raw as varchar), '\', '\\'), '''', '\''')
                    || ''' is in exponent notation: write the count in digits'
            when downloads is null
                then 'downloads '''
                    || replace(replace(cast(downloads_raw as varchar), '\', '\\'), '''', '\''')
                    || ''' is not a whole number'
            when downloads < 0 then 'downloads ' || downloads || ' is negative'
        end as problem
    from staged
),

-- A file written in key order (most exports are) cannot repeat a key, and saying so
-- takes one comparison a row, half the cost of grouping 2M keys. The rows come in
-- whatever order the scan gives, and that is sound: if every row is above the one
-- before it, the sequence is strictly increasing, so no key repeats. A NULL makes its
-- comparison fail, so such a file takes the grouping below. $may_be_in_order is
-- false when the file's first rows are already out of order (rollout.ingest looks):
-- then no row is compared, and the grouping runs, as it would anyway.
previous_keys as (
    select
        package,
        day,
        lag(package) over () as previous_package,
        lag(day) over () as previous_day
    from staged
    where $may_be_in_order
),

in_key_order as (
    select
        count(*) filter (
            where package > previous_package
                or (package = previous_package and day > previous_day)
        ) = count(*) - 1 as strictly_increasing
    from previous_keys
),

-- Otherwise repeats are found in one pass over a 64-bit hash of the key (cheaper to
-- group than the strings); the rows behind a repeated hash are then compared exactly,
-- so a hash collision can never pass for a duplicate.
repeated_hashes as (
    select hash(package, day) as key_hash
    from staged
    where not (select strictly_increasing from in_key_order)
    group by key_hash
    having count(*) > 1
),

repeated_keys as (
    select package, day
    from staged
    where hash(package, day) in (select key_hash from repeated_hashes)
    group by package, day
    having count(*) > 1
),

repeated_rows as (
    select staged.ordinal, staged.package, staged.day, staged.downloads
    from staged
    inner join repeated_keys using (package, day)
),

repeated_counts as (
    select package, day, count(distinct downloads) as distinct_counts, min(ordinal) as first
    from repeated_rows
    group by package, day
),

repeats as (
    select
        repeated_rows.ordinal,
        case
            when repeated_counts.distinct_counts > 1
                then 'conflicting counts for ' || repeated_rows.package || ' on '
                    || repeated_rows.day || ' within this file'
        end as problem,
        repeated_counts.distinct_counts = 1 and repeated_rows.ordinal <> repeated_counts.first
            as duplicate
    from repeated_rows
    inner join repeated_counts using (package, day)
),

already_loaded as (
    select
        loaded.package,
        loaded.day,
        any_value(loaded.downloads) as downloads,
        any_value(files.path) as path
    from raw_downloads as loaded
    inner join ingested_files as files using (file_id)
    -- $overlaps is false when no loaded row falls in this file's days, the usual
    -- case (one new file a day): the join is then skipped. The constant day bounds
    -- let DuckDB skip row groups of other days.
    where $overlaps
      and loaded.day between $min_day and $max_day
      -- $own_files: the files' own rows, when they are in raw_downloads already
      and not list_contains($own_files, loaded.file_id)
      and (loaded.package, loaded.day) in (select package, day from staged)
    group by loaded.package, loaded.day
),

against_loaded as (
    select
        staged.ordinal,
        case
            when already_loaded.downloads <> staged.downloads
                then 'conflicts with ' || already_loaded.downloads || ' downloads for '
                    || staged.package || ' on ' || staged.day
                    || ' already loaded from ' || already_loaded.path
        end as problem,
        already_loaded.downloads = staged.downloads as duplicate
    from staged
    inner join already_loaded using (package, day)
),

findings as (
    select ordinal, problem, false as duplicate, 1 as priority
    from row_problems
    where problem is not null
    union all
    select ordinal, problem, duplicate, 2 as priority
    from repeats
    where problem is not null or duplicate
    union all
    select ordinal, problem, duplicate, 3 as priority
    from against_loaded
),

-- A row can be found twice (bad, repeated in the file, already loaded): the first
-- finding by priority names it.
first_finding as (
    select
        ordinal,
        arg_min(problem, priority) as problem,
        arg_min(duplicate, priority) as duplicate
    from findings
    group by ordinal
),

final as (
    select
        staged.ordinal,
        staged.line,
        first_finding.problem,
        coalesce(first_finding.problem is null and first_finding.duplicate, false)
            as duplicate,
        json_object(
            'package', coalesce(staged.package_raw, staged.package),
            'day', coalesce(cast(staged.day_raw as varchar), cast(staged.day as varchar)),
            'downloads',
            coalesce(cast(staged.downloads_raw as varchar), cast(staged.downloads as varchar))
        )::varchar as record
    from first_finding
    inner join staged using (ordinal)
)

select * from final
