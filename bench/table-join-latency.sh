#!/usr/bin/env bash
# How long a change to the right table of a table-table join takes to show in the joined table:
# `eddy server` on its embedded broker, tables lt and rt joined on their keys into both_sides, a
# push query on both_sides open; then UPDATES times an INSERT into rt (through /ksql) and the wait
# until the push query shows the joined row with the new value, at random gaps of 50-400 ms.
# Usage: EDDY_RELEASE=1 bench/table-join-latency.sh [UPDATES] (default 60); EDDY=path/to/eddy
# runs that binary instead of building one. Needs curl and python3. Results: docs/benchmarks.md,
# "Joins".
set -euo pipefail
UPDATES=${1:-60}
PORT=${PORT:-18091}
source "$(dirname "$0")/server.sh"
python3 - "$PORT" "$UPDATES" <<'PY'
import http.client, json, random, sys, threading, time

port, updates = int(sys.argv[1]), int(sys.argv[2])

def ksql(statement):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", "/ksql", json.dumps({"ksql": statement}),
                       {"Content-Type": "application/vnd.ksql.v1+json"})
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        sys.exit(f"{statement}: HTTP {response.status} {body[:300]!r}")

ksql("CREATE TABLE lt (id STRING PRIMARY KEY, a INT) WITH (KAFKA_TOPIC='lt', VALUE_FORMAT='JSON', PARTITIONS=1);")
ksql("CREATE TABLE rt (id STRING PRIMARY KEY, b INT) WITH (KAFKA_TOPIC='rt', VALUE_FORMAT='JSON', PARTITIONS=1);")
ksql("INSERT INTO lt (id, a) VALUES ('k', 1);")
ksql("INSERT INTO rt (id, b) VALUES ('k', -1);")
ksql("CREATE TABLE both_sides AS SELECT lt.id AS id, a, b FROM lt JOIN rt ON lt.id = rt.id;")

# The push query: each joined row is one line [ID, A, B]; the reader notes when each B arrives.
arrived = {}
seen = threading.Condition()
stream = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
stream.request("POST", "/query-stream",
               json.dumps({"sql": "SELECT id, a, b FROM both_sides EMIT CHANGES;",
                           "properties": {"auto.offset.reset": "earliest"}}),
               {"Content-Type": "application/vnd.ksqlapi.delimited.v1"})
response = stream.getresponse()

def read():
    for line in response:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, list) and len(row) == 3:
            with seen:
                arrived[row[2]] = time.monotonic()
                seen.notify_all()

threading.Thread(target=read, daemon=True).start()

def wait_for(value, timeout):
    deadline = time.monotonic() + timeout
    with seen:
        while value not in arrived and time.monotonic() < deadline:
            seen.wait(deadline - time.monotonic())
    return arrived.get(value)

if wait_for(-1, 60) is None:
    sys.exit("the joined row did not show within 60 s")
latencies = []
for i in range(updates):
    sent = time.monotonic()
    ksql(f"INSERT INTO rt (id, b) VALUES ('k', {i});")
    at = wait_for(i, 10)
    if at is None:
        sys.exit(f"update {i} did not show within 10 s")
    latencies.append((at - sent) * 1000)
    time.sleep(random.uniform(0.05, 0.4))
latencies.sort()
q = lambda f: latencies[min(len(latencies) - 1, int(len(latencies) * f))]
print(f"{len(latencies)} updates: p50 {q(0.5):.0f} ms, p90 {q(0.9):.0f} ms, "
      f"max {latencies[-1]:.0f} ms, mean {sum(latencies) / len(latencies):.0f} ms")
PY
