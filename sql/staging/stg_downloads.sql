-- Daily downloads per package; ingest guarantees one row per (package, day).
create or replace view stg_downloads as
with

downloads as (
    select * from raw_downloads
),

final as (
    select package, day, downloads
    from downloads
)

select * from final;

comment on view stg_downloads is
    'Daily downloads per package (one row per package and day), from raw_downloads.';
