-- -*- mode: sql; sql-product: sqlite; -*-
-- Eddy's patch: the records of a partition from an offset ($4) up to the high watermark ($5), in
-- offset order, each with its size. The caller stops reading once it has the fetch's bytes, which
-- ends the scan. (record_fetch.sql summed the sizes in a window over every record up to the high
-- watermark, so a fetch far behind the end read the whole rest of the partition.)

select

r.offset_id,
r.attributes,
r.timestamp,
r.k,
r.v,
coalesce(length(r.k), 0) + coalesce(length(r.v), 0) as bytes,
r.producer_id,
r.producer_epoch

from

cluster c
join topic t on t.cluster = c.id
join topition tp on tp.topic = t.id
join record r on r.topition = tp.id

where

c.name = $1
and t.name = $2
and tp.partition = $3
and r.offset_id >= $4
and r.offset_id < $5

order by r.offset_id;
