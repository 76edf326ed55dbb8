"""Drives an Eddy server with ksql-python-ng, a ksqlDB client from PyPI, unmodified.

Usage: python ksql_python_ng.py URL
Exits non-zero (with the reason) when the client cannot do what it does against ksqlDB.
"""

import json
import sys
import uuid

from ksql import KSQLAPI
from ksql.utils import parse_query_results


def main(url: str) -> None:
    client = KSQLAPI(url)  # checks /info for the server version
    suffix = uuid.uuid4().hex[:8]
    stream = f"py_orders_{suffix}"
    table = f"py_totals_{suffix}"
    created = client.ksql(
        f"CREATE STREAM {stream} (id STRING KEY, item STRING, qty INT) "
        f"WITH (KAFKA_TOPIC='{stream}', VALUE_FORMAT='JSON', PARTITIONS=1);"
    )
    assert created[0]["@type"] == "currentStatus", created
    assert created[0]["commandStatus"]["status"] == "SUCCESS", created
    client.ksql(
        f"CREATE TABLE {table} AS SELECT item, SUM(qty) AS total FROM {stream} GROUP BY item;",
        stream_properties={"ksql.streams.auto.offset.reset": "earliest"},
    )
    for id_, item, qty in [("o1", "apple", 2), ("o2", "pear", 1), ("o3", "apple", 5)]:
        client.ksql(f"INSERT INTO {stream} (id, item, qty) VALUES ('{id_}', '{item}', {qty});")

    streams = client.ksql("SHOW STREAMS;")[0]["streams"]
    assert any(s["name"] == stream.upper() for s in streams), streams

    # A pull query over HTTP/2 (/query-stream), parsed by the client into dicts.
    rows = list(
        client.query(
            f"SELECT * FROM {table} WHERE item = 'apple';",
            use_http2=True,
            parse=True,
            stream_properties={"eddy.read_your_writes": "true"},
        )
    )
    assert rows == [{"ITEM": "apple", "TOTAL": 7}], rows

    # A push query over HTTP/2 to its LIMIT.
    rows = list(
        client.query(
            f"SELECT id, qty FROM {stream} EMIT CHANGES LIMIT 2;",
            use_http2=True,
            parse=True,
            stream_properties={"auto.offset.reset": "earliest"},
        )
    )
    assert rows == [{"ID": "o1", "QTY": 2}, {"ID": "o2", "QTY": 1}], rows

    # A push query without LIMIT, ended by close_query from another thread.
    chunks = client.query(
        f"SELECT id FROM {stream} EMIT CHANGES;",
        use_http2=True,
        stream_properties={"auto.offset.reset": "earliest"},
    )
    header = json.loads(next(chunks))
    query_id = header["queryId"]
    rows = [json.loads(next(chunks)) for _ in range(3)]
    assert rows == [["o1"], ["o2"], ["o3"]], rows
    assert client.close_query(query_id) is True
    rest = [c for c in chunks if c.strip()]  # the response ends once the query is closed
    assert rest == [], rest
    assert client.close_query(query_id) is False  # no longer running

    # The HTTP/1.1 /query endpoint, as the client's default.
    lines = "".join(client.query(f"SELECT * FROM {table} WHERE item = 'pear';"))
    result = json.loads(lines)
    assert result[1]["row"]["columns"] == ["pear", 1], result

    # Streaming inserts over HTTP/2: each row acknowledged, a bad one answered on its own.
    acks = client.inserts_stream(
        stream,
        [{"id": "o4", "item": "fig", "qty": 3}, {"ID": "o5", "ITEM": "kiwi", "QTY": "many"}],
    )
    assert acks[0] == {"status": "ok", "seq": 0}, acks
    assert acks[1]["status"] == "error" and acks[1]["seq"] == 1, acks
    assert "QTY" in acks[1]["message"] or "many" in acks[1]["message"], acks
    refused = client.inserts_stream(f"nosuch_{suffix}", [{"a": 1}])
    assert refused[0]["@type"] == "generic_error", refused
    assert refused[0]["error_code"] == 40000, refused
    rows = list(
        client.query(
            f"SELECT id, item FROM {stream} EMIT CHANGES LIMIT 4;",
            use_http2=True,
            parse=True,
            stream_properties={"auto.offset.reset": "earliest"},
        )
    )
    assert rows[3] == {"ID": "o4", "ITEM": "fig"}, rows

    print("ksql-python-ng: ok")


if __name__ == "__main__":
    main(sys.argv[1])
