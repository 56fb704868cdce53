insert into raw_downloads (package, day, downloads, file_id)
select package, day, downloads, $file_id
from incoming
-- Everything but the flagged rows (usually none): an anti join, not NOT IN, whose
-- NULL semantics cost a full mark join.
anti join flagged using (ordinal)
