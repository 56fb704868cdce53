-- Validate the staged manifests file (temp table `incoming`); keeps the bad rows
-- with their `problem`. Later files supersede earlier ones, so only repeats within
-- this file are a conflict.
create or replace temp table flagged as
with

staged as not materialized (
    select * from incoming
),

row_checks as (
    select
        *,
        case
            when name is null then 'name is missing or not a string'
            when name = '' then 'name is empty'
            when lower(name) in ('node_modules', 'favicon.ico')
                then 'package name '''
                    || replace(replace(name, '\', '\\'), '''', '\''')
                    || ''' is reserved'
            when not regexp_full_match(name, $name_pattern)
                then 'package name '''
                    || replace(replace(name, '\', '\\'), '''', '\''')
                    || ''' is not a valid npm package name'
            when version is null or trim(version) = ''
                then 'version is missing or not a string'
            when maintainers_malformed or maintainers is null or len(maintainers) = 0
                then 'maintainers must be a non-empty list of usernames'
            when len(list_filter(maintainers, lambda m: m is null or trim(m) = '')) > 0
                then 'a maintainer has no username'
            when dependencies_malformed
                then 'dependencies must be an object of package name to version range'
            when devDependencies_malformed
                then 'devDependencies must be an object of package name to version range'
            when peerDependencies_malformed
                then 'peerDependencies must be an object of package name to version range'
            when dependencies_repeats
                then 'dependencies lists a package more than once'
            when devDependencies_repeats
                then 'devDependencies lists a package more than once'
            when peerDependencies_repeats
                then 'peerDependencies lists a package more than once'
        end as row_problem
    from staged
),

dependencies as (
    select * from incoming_dependencies
),

bad_dependency_names as (
    select ordinal, min(coalesce(dependency, '')) as dependency
    from dependencies
    where dependency is null or not regexp_full_match(dependency, $name_pattern)
    group by ordinal
),

repeated_in_file as (
    select name, count(*) as copies
    from staged
    where name is not null
    group by name
    having count(*) > 1
),

final as (
    select
        row_checks.ordinal,
        row_checks.line,
        json_object('name', row_checks.name, 'version', row_checks.version)::varchar as record,
        coalesce(
            row_checks.row_problem,
            case
                when bad_dependency_names.dependency is not null
                    then 'dependency name '''
                        || replace(replace(bad_dependency_names.dependency, '\', '\\'), '''', '\''')
                        || ''' is not a valid npm package name'
                when repeated_in_file.copies > 1
                    then 'package ' || row_checks.name || ' appears '
                        || repeated_in_file.copies || ' times in this file'
            end
        ) as problem,
        false as duplicate
    from row_checks
    left join bad_dependency_names using (ordinal)
    left join repeated_in_file using (name)
)

select * from final
where problem is not null
