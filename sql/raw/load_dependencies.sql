-- One row per declared dependency, by kind, of every manifest that passed the checks;
-- (file_id, ordinal) points at the manifest in raw_manifests.
insert into raw_dependencies (file_id, ordinal, dependency, range, kind)
select $file_id, ordinal, dependency, range, kind
from incoming_dependencies
anti join flagged using (ordinal)
