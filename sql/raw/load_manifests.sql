insert into raw_manifests (name, version, maintainers, file_id, ordinal, self_dependency_kinds)
select
    name, version, list_transform(maintainers, lambda m: trim(m)), $file_id, ordinal,
    self_dependency_kinds
from incoming
anti join flagged using (ordinal)
