-- -*- mode: sql; sql-product: sqlite; -*-
-- Eddy's patch of tansu-storage 0.6.0 (Apache-2.0): compaction in one pass. The statement of
-- sql/policy_compact.sql looked up, for every key with several records, the earlier records of
-- its partition one by one (a scan of the partition per key, as record has no index by key):
-- quadratic, it had not finished after ten minutes over 800 000 records of
-- compacted topics. This one numbers each key's records from the newest in one sort and deletes
-- all but the newest: the same records, 8 s for that database (0.9 s with nothing to delete).

with

compacted as (
    select tp.id as topition
    from topition tp
    join topic t on tp.topic = t.id
    join cluster c on t.cluster = c.id
    join topic_configuration tc on tc.topic = t.id
    where c.name = $1
    and tc.name = 'cleanup.policy'
    and tc.value like '%compact%'
),

superseded as (
    select topition, offset_id from (
        select
        r.topition as topition,
        r.offset_id as offset_id,
        row_number() over (
            partition by r.topition, r.k order by r.offset_id desc
        ) as newer
        from record r
        join compacted on r.topition = compacted.topition
        where r.k is not null
    )
    where newer > 1
)

delete from record
where (record.topition, record.offset_id) in (select * from superseded);
