#!/usr/bin/env bash
# The retail inventory on a running Eddy server, through its REST API: creates the streams and the
# `inventory` table (inventory.sql) unless they exist, then sends random shipments and sales for a
# few stores and items and, after each round, reads one store/item's count with a pull query next
# to the count this script expects. Exits non-zero if they ever differ.
#   EVENTS   events to send (default 40)       SEED  random seed (default 7)
source "$(dirname "$0")/../lib.sh"
here="$(cd "$(dirname "$0")" && pwd)"
events="${EVENTS:-40}"
RANDOM="${SEED:-7}"

eddy_wait
if ! eddy_has_source INVENTORY; then
  eddy_ksql "$(grep -v '^--' "$here/inventory.sql")"
  echo "created streams sales, shipments, stock_movements and table inventory"
fi

# What this script expects for store s1 / item apple, starting from what the table has now.
current() {
  eddy_pull "SELECT on_hand FROM inventory WHERE store_id = 's1' AND item_id = 'apple';"
}
expected="$(current)"
expected="${expected:-0}"
echo "s1/apple on hand at start: $expected"

stores=(s1 s2)
items=(apple pear)
for i in $(seq 1 "$events"); do
  store="${stores[RANDOM % 2]}"
  item="${items[RANDOM % 2]}"
  qty=$((RANDOM % 5 + 1))
  if [ $((RANDOM % 3)) -eq 0 ]; then
    eddy_ksql "INSERT INTO shipments (store_id, item_id, qty) VALUES ('$store', '$item', $((qty * 3)));"
    [ "$store/$item" = "s1/apple" ] && expected=$((expected + qty * 3))
  else
    eddy_ksql "INSERT INTO sales (store_id, item_id, qty) VALUES ('$store', '$item', $qty);"
    [ "$store/$item" = "s1/apple" ] && expected=$((expected - qty))
  fi
  if [ $((i % 10)) -eq 0 ] || [ "$i" -eq "$events" ]; then
    actual="$(current)"
    echo "after $i events: s1/apple on hand = ${actual:-none} (expected $expected)"
    if [ "${actual:-0}" != "$expected" ]; then
      echo "inventory differs from the events sent" >&2
      exit 1
    fi
  fi
done

echo "inventory (store item on_hand movements):"
eddy_pull "SELECT store_id, item_id, on_hand, movements FROM inventory;" | sort | sed 's/^/  /'
