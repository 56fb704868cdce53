-- The publish rows an older rollout loaded twice (before ingest skipped a row already
-- loaded from another file: sql/raw/check_publishes.sql), judged by the same rule as
-- sql/raw/repair_logins_loaded_twice.sql: a file's copies of a publish are duplicates
-- up to the most copies any earlier file holds. token_kind is NULL unless via is token;
-- a window's partition takes NULLs as equal, as the check's key ('') does.
create or replace temp table loaded_twice as
with

counted as (
    select
        rowid as row_id,
        file_id,
        occurred_at,
        row_number() over (
            partition by occurred_at, package, username, via, token_kind, second_factor,
                file_id
            order by rowid
        ) as copy,
        count(*) over (
            partition by occurred_at, package, username, via, token_kind, second_factor,
                file_id
        ) as copies,
        package,
        username,
        via,
        token_kind,
        second_factor
    from raw_publishes
),

judged as (
    select
        row_id,
        file_id,
        occurred_at,
        copy,
        coalesce(
            max(copies) over (
                partition by occurred_at, package, username, via, token_kind, second_factor
                order by file_id
                range between unbounded preceding and 1 preceding
            ),
            0
        ) as loaded_before
    from counted
)

select row_id, file_id, occurred_at from judged
where copy <= loaded_before
