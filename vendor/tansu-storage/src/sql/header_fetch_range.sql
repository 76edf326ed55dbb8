-- -*- mode: sql; sql-product: sqlite; -*-
-- Eddy's patch: the headers of the records of a partition from offset $4 to offset $5
-- (inclusive), by offset and, within a record, in the order they were written; one query per
-- fetch instead of header_fetch.sql's one per record.

select h.offset_id, h.k, h.v
from header h
join topition tp on tp.id = h.topition
join topic t on tp.topic = t.id
join cluster c on t.cluster = c.id
where c.name = $1
and t.name = $2
and tp.partition = $3
and h.offset_id >= $4
and h.offset_id <= $5
order by h.offset_id, h.rowid;
