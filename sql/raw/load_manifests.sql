insert into raw_manifests (name, version, maintainers, file_id)
select name, version, list_transform(maintainers, lambda m: trim(m)), $file_id
from checked
where problem is null
