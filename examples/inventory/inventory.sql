-- Retail inventory: sales and shipments are the events; `inventory` is the read model, one row per
-- store and item with the quantity on hand, kept current as events arrive.
CREATE STREAM sales (store_id STRING KEY, item_id STRING KEY, qty INT)
  WITH (KAFKA_TOPIC='sales', KEY_FORMAT='JSON', VALUE_FORMAT='JSON', PARTITIONS=4);

CREATE STREAM shipments (store_id STRING KEY, item_id STRING KEY, qty INT)
  WITH (KAFKA_TOPIC='shipments', KEY_FORMAT='JSON', VALUE_FORMAT='JSON', PARTITIONS=4);

-- Both kinds of event as signed stock movements: a shipment adds, a sale takes away.
CREATE STREAM stock_movements (store_id STRING KEY, item_id STRING KEY, delta INT)
  WITH (KAFKA_TOPIC='stock_movements', KEY_FORMAT='JSON', VALUE_FORMAT='JSON', PARTITIONS=4);

INSERT INTO stock_movements SELECT store_id, item_id, qty AS delta FROM shipments;

INSERT INTO stock_movements SELECT store_id, item_id, -qty AS delta FROM sales;

CREATE TABLE inventory AS
  SELECT store_id, item_id, SUM(delta) AS on_hand, COUNT(*) AS movements
  FROM stock_movements
  GROUP BY store_id, item_id;
