-- One row per declared dependency, by kind, of every manifest that passed the checks.
insert into raw_dependencies (package, dependency, range, kind, file_id)
with

accepted as (
    select name, dependencies, devDependencies, peerDependencies
    from incoming
    anti join flagged using (ordinal)
),

declared as (
    select name, unnest(map_entries(dependencies)) as entry, 'prod' as kind
    from accepted where dependencies is not null
    union all
    select name, unnest(map_entries(devDependencies)) as entry, 'dev' as kind
    from accepted where devDependencies is not null
    union all
    select name, unnest(map_entries(peerDependencies)) as entry, 'peer' as kind
    from accepted where peerDependencies is not null
),

final as (
    select name as package, entry.key as dependency, entry.value as range, kind, $file_id
    from declared
)

select * from final
