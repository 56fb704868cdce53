insert into raw_downloads (package, day, downloads, file_id)
select package, day, downloads, $file_id
from checked
where problem is null and not duplicate
order by day, package
