#!/usr/bin/env bash
# How fast a query skips malformed records: `eddy server` on its embedded broker, RECORDS records
# that are not JSON and then one good record written to a one-partition stream with kcat; then
# times a CSAS over the stream from its start until the good record comes out of it (a push query
# on the CSAS's output), and checks that the processing log holds an entry for every bad record.
# Usage: EDDY_RELEASE=1 bench/malformed.sh [RECORDS] (default 10000); EDDY=path/to/eddy runs that
# binary instead of building one. Needs curl, python3 and kcat (./scripts/test installs it).
# Results: docs/benchmarks.md, "A processing log that keeps up with bad input".
set -euo pipefail
RECORDS=${1:-10000}
PORT=${PORT:-18092}
source "$(dirname "$0")/server.sh"
URL="http://127.0.0.1:$PORT"
BROKER=$(grep -o 'Embedded Kafka broker listening on [0-9.:]*' "$DIR/log" | head -n 1 | awk '{print $NF}')
[ -n "$BROKER" ] || { echo "the server's log names no embedded broker:" >&2; tail -5 "$DIR/log" >&2; exit 1; }
ksql() {
  curl -sf -X POST "$URL/ksql" -H 'Content-Type: application/vnd.ksql.v1+json' \
    -d "{\"ksql\":\"$1\",\"streamsProperties\":{\"auto.offset.reset\":\"earliest\"}}" >/dev/null
}
ksql "CREATE STREAM ev (id STRING KEY, n INT) WITH (KAFKA_TOPIC='ev', VALUE_FORMAT='JSON', PARTITIONS=1);"
python3 -c "
for i in range($RECORDS): print('{\"N\": %d' % i)
print('{\"N\": -1}')
" >"$DIR/records"
"$ROOT/scripts/kcat" -b "$BROKER" -P -t ev -l "$DIR/records"
START=$(date +%s.%N)
ksql "CREATE STREAM good AS SELECT * FROM ev;"
curl -sf -X POST "$URL/query-stream" -H 'Content-Type: application/vnd.ksqlapi.delimited.v1' \
  -d '{"sql":"SELECT n FROM good EMIT CHANGES LIMIT 1;","properties":{"auto.offset.reset":"earliest"}}' >"$DIR/rows"
END=$(date +%s.%N)
grep -q -- '-1' "$DIR/rows" || { echo "the good record did not come out: $(cat "$DIR/rows")" >&2; exit 1; }
LOGGED=$(timeout 120 "$ROOT/scripts/kcat" -b "$BROKER" -C -t _eddy-eddy-processing-log -o beginning \
  -c "$RECORDS" -e -q 2>/dev/null | grep -c DESERIALIZATION_ERROR || true)
python3 -c "
records, start, end, logged = $RECORDS, $START, $END, $LOGGED
seconds = end - start
print(f'{records} malformed records skipped in {seconds:.2f} s ({records / seconds:,.0f} records/s, '
      f'the CSAS\'s start included); processing log entries: {logged} of {records}')
"
