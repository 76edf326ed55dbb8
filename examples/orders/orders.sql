-- A first look at Eddy: a stream over a topic, a continuous query, a push query.
-- Run it from the REPL with:  RUN SCRIPT 'examples/orders/orders.sql';
SET 'auto.offset.reset'='earliest';

CREATE STREAM IF NOT EXISTS orders (id STRING KEY, item STRING, qty INT, price DOUBLE)
  WITH (KAFKA_TOPIC='orders', VALUE_FORMAT='JSON', PARTITIONS=4);

INSERT INTO orders (id, item, qty, price) VALUES ('o-1', 'apple', 3, 0.5);
INSERT INTO orders (id, item, qty, price) VALUES ('o-2', 'pear', 40, 0.75);
INSERT INTO orders (id, item, qty, price) VALUES ('o-3', 'fig', 12, 2.0);

CREATE STREAM IF NOT EXISTS big_orders AS
  SELECT id, UCASE(item) AS item, qty, qty * price AS total
  FROM orders
  WHERE qty >= 10
  EMIT CHANGES;

SELECT * FROM big_orders EMIT CHANGES LIMIT 2;
