-- -*- mode: sql; sql-product: sqlite; -*-
-- Eddy's patch: watermark_select_no_update.sql with the partition's row id, so that a produce
-- resolves the partition once and inserts its records by id.

select

w.low, w.high, tp.id

from

cluster c
join topic t on t.cluster = c.id
join topition tp on tp.topic = t.id
join watermark w on w.topition = tp.id

where

c.name = $1
and t.name = $2
and tp.partition = $3;
