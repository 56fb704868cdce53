-- A downloads file in typed Parquet (landing.loads_in_place), straight into
-- raw_downloads inside the transaction that then checks the rows where they landed:
-- rollout.ingest commits only if every row passes, else rolls back and stages the
-- file to say which rows are wrong. Staging first would copy 2M rows for nothing.
-- hive_partitioning: the rows are the file's, not a folder's above it named `day=...`
-- (landing.NO_HIVE_PARTITIONS).
insert into raw_downloads (package, day, downloads, file_id)
select package, day, cast(downloads as bigint), $file_id
from read_parquet($path, hive_partitioning = false)
