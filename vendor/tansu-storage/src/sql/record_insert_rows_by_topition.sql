-- -*- mode: sql; sql-product: sqlite; -*-
-- Eddy's patch: the head of a multi-row record_insert_by_topition.sql. The SQLite engine appends
-- one "($1, $2, $3, $4, $5, $6, $7, $8)" per row, numbered on, so that one statement inserts
-- several records of a batch (see RECORD_INSERT_ROWS in sql.rs).

insert into record
(topition, offset_id, attributes, producer_id, producer_epoch, timestamp, k, v)
values
