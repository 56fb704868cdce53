-- Each maintainer once, in the order listed: a username repeated (or repeated but for
-- spaces, or once as {"name": ...}) is one maintainer, not two to resolve or count.
insert into raw_manifests (name, version, maintainers, file_id, ordinal, self_dependency_kinds)
select
    name, version,
    list_filter(trimmed, lambda m, i: list_position(trimmed, m) = i),
    $file_id, ordinal, self_dependency_kinds
from (select *, list_transform(maintainers, lambda m: trim(m)) as trimmed from incoming)
anti join flagged using (ordinal)
