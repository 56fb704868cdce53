insert into raw_publishes (
    occurred_at, package, username, via, token_kind, second_factor, file_id
)
select occurred_at, package, username, via, token_kind, second_factor, $file_id
from incoming
-- Everything but the flagged rows (usually none): an anti join, as for logins.
anti join flagged using (ordinal)
