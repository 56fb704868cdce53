-- What the warehouse holds, for the line printed after an ingest and by the demo.
with

packages as (
    select count(*) as packages from stg_manifests
),

edges as (
    select
        count(*) filter (where kind = 'prod') as dependency_edges,
        count(*) filter (where kind = 'dev') as dev_dependency_edges
    from stg_dependencies
),

downloads as (
    select count(*) as download_rows, min(day) as first_day, max(day) as last_day
    from stg_downloads
),

accounts as (
    select
        count(*) as accounts,
        count(*) filter (where id in (
            select account_id from registry.tfa_factors where removed_at is null
        )) as accounts_with_2fa
    from registry.accounts
),

files as (
    select
        count(*) as files_loaded,
        coalesce(sum(rows_quarantined), 0) as rows_quarantined
    from ingested_files
),

final as (
    select
        packages.packages,
        edges.dependency_edges,
        edges.dev_dependency_edges,
        accounts.accounts,
        accounts.accounts_with_2fa,
        round(accounts.accounts_with_2fa / nullif(accounts.accounts, 0), 4) as share_with_2fa,
        downloads.download_rows,
        downloads.first_day,
        downloads.last_day,
        files.files_loaded,
        files.rows_quarantined
    from packages, edges, accounts, downloads, files
)

select * from final
