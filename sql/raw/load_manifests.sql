insert into raw_manifests (name, version, maintainers, file_id)
select name, version, list_transform(maintainers, lambda m: trim(m)), $file_id
from incoming
-- Everything but the flagged rows (usually none): an anti join, not NOT IN, whose
-- NULL semantics cost a full mark join.
anti join flagged using (ordinal)
