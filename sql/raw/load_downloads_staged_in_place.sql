-- A staged downloads file of a batch (rollout.ingest._load_in_place): every typed row
-- goes into raw_downloads, inside the transaction that then checks the batch where it
-- landed. A row with a NULL (a value that did not convert) breaks the NOT NULL
-- constraints and sends the batch apart, to the staged path that names it.
insert into raw_downloads (package, day, downloads, file_id)
select package, day, downloads, $file_id
from incoming
