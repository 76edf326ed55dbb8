-- Word count: lines of text in, a table of word counts out (topic word_counts).
CREATE STREAM IF NOT EXISTS lines (id STRING KEY, line STRING)
  WITH (KAFKA_TOPIC='lines', VALUE_FORMAT='JSON', PARTITIONS=2);

CREATE TABLE IF NOT EXISTS word_counts WITH (KAFKA_TOPIC='word_counts') AS
  SELECT word, COUNT(*) AS occurrences
  FROM (SELECT EXPLODE(REGEXP_SPLIT_TO_ARRAY(LCASE(line), '\W+')) AS word FROM lines)
  WHERE word <> ''
  GROUP BY word;
