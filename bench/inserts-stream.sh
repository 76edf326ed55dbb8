#!/usr/bin/env bash
# Times one POST /inserts-stream of ROWS rows to a one-partition JSON stream of `eddy server` on
# its embedded broker, then reads the rows back with a push query and checks all arrived, in
# order. Usage: EDDY_RELEASE=1 bench/inserts-stream.sh [ROWS] (default 50000). Needs curl and
# python3. Results: docs/benchmarks.md, "Streaming inserts".
set -euo pipefail
ROWS=${1:-50000}
PORT=${PORT:-18090}
source "$(dirname "$0")/server.sh"
URL="http://127.0.0.1:$PORT"
curl -sf -X POST "$URL/ksql" -H 'Content-Type: application/vnd.ksql.v1+json' \
  -d "{\"ksql\":\"CREATE STREAM ev (id STRING KEY, n INT) WITH (KAFKA_TOPIC='ev', VALUE_FORMAT='JSON', PARTITIONS=1);\"}" >/dev/null
python3 -c "
print('{\"target\":\"ev\"}')
for i in range($ROWS): print('{\"ID\":\"k%d\",\"N\":%d}' % (i % 100, i))
" >"$DIR/body"
START=$(date +%s.%N)
curl -sf -X POST "$URL/inserts-stream" --data-binary @"$DIR/body" >"$DIR/acks"
END=$(date +%s.%N)
curl -sf -X POST "$URL/query-stream" -H 'Content-Type: application/vnd.ksqlapi.delimited.v1' \
  -d "{\"sql\":\"SELECT n FROM ev EMIT CHANGES LIMIT $ROWS;\",\"properties\":{\"auto.offset.reset\":\"earliest\"}}" >"$DIR/rows"
python3 - "$DIR/acks" "$DIR/rows" "$ROWS" "$START" "$END" <<'PY'
import json, sys
acks, rows, n, start, end = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
ok = sum(1 for line in open(acks) if '"ok"' in line)
values = [r[0] for r in (json.loads(l) for l in open(rows) if l.strip()) if isinstance(r, list)]
seconds = end - start
print(f"{n} rows in {seconds:.2f} s ({n / seconds:,.0f} rows/s); {ok} acknowledged; "
      f"read back {len(values)}, in order: {values == list(range(n))}")
PY
