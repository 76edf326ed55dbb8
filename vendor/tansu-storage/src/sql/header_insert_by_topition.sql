-- -*- mode: sql; sql-product: sqlite; -*-
-- Eddy's patch: header_insert.sql for a record whose partition is already resolved to its row
-- id ($1); the record was inserted just before, in the same transaction.

insert into header
(topition, offset_id, k, v)
values ($1, $2, $3, $4);
