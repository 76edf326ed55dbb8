-- -*- mode: sql; sql-product: sqlite; -*-
-- Eddy's patch: record_insert.sql for a partition already resolved to its row id ($1), without
-- the three lookups per record of its joins.

insert into record
(topition, offset_id, attributes, producer_id, producer_epoch, timestamp, k, v)
values ($1, $2, $3, $4, $5, $6, $7, $8);
