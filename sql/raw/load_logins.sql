insert into raw_logins (occurred_at, username, second_factor, outcome, file_id)
select occurred_at, username, second_factor, outcome, $file_id
from checked
where problem is null
order by occurred_at
