insert into raw_logins (occurred_at, username, second_factor, outcome, file_id)
select occurred_at, username, second_factor, outcome, $file_id
from incoming
-- Everything but the flagged rows (usually none): an anti join, not NOT IN, whose
-- NULL semantics cost a full mark join.
anti join flagged using (ordinal)
