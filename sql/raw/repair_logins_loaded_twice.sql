-- The login rows an older rollout loaded twice (before ingest skipped a row already
-- loaded from another file: sql/raw/check_logins.sql): the rows the check would have
-- called duplicates, had it run when each file was loaded. Files load one at a time
-- in file_id order, so a file's copies of a row are duplicates up to the most copies
-- any earlier file holds; its copies past that were new. What stays is what a rebuild
-- from the same files loads. Keeps each row's file; `rowid` names the rows to delete.
create or replace temp table loaded_twice as
with

counted as (
    select
        rowid as row_id,
        file_id,
        occurred_at,
        username,
        second_factor,
        outcome,
        row_number() over (
            partition by occurred_at, username, second_factor, outcome, file_id
            order by rowid
        ) as copy,
        count(*) over (
            partition by occurred_at, username, second_factor, outcome, file_id
        ) as copies
    from raw_logins
),

judged as (
    select
        row_id,
        file_id,
        occurred_at,
        copy,
        coalesce(
            max(copies) over (
                partition by occurred_at, username, second_factor, outcome
                order by file_id
                range between unbounded preceding and 1 preceding
            ),
            0
        ) as loaded_before
    from counted
)

select row_id, file_id, occurred_at from judged
where copy <= loaded_before
