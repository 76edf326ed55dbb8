"""Nexmark q0, q1, q2 with quixstreams, over the bid topic that `eddy bench load-nexmark` fills.

Usage: python nexmark.py QUERY --bootstrap HOST:PORT --topic PREFIXbid --expected N [--verify]

Reads the bid topic from the earliest offset with a fresh consumer group, applies the query with a
StreamingDataFrame, writes the result rows as JSON to a fresh output topic, stops once N bids were
processed, and prints one JSON line with the timings.
"""

import time

WALL_START = time.perf_counter()
CPU_START = time.process_time()

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import uuid  # noqa: E402

from quixstreams import Application  # noqa: E402
from quixstreams.models import TopicConfig  # noqa: E402

# The three queries, as Eddy defines them (crates/eddy/src/nexmark.rs):
#   q0: SELECT auction, bidder, price, date_time, extra FROM bid
#   q1: SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid
#   q2: SELECT auction, price FROM bid WHERE auction % 123 = 0


def q0(sdf):
    return sdf.apply(
        lambda b: {
            "auction": b["auction"],
            "bidder": b["bidder"],
            "price": b["price"],
            "date_time": b["date_time"],
            "extra": b["extra"],
        }
    )


def q1(sdf):
    return sdf.apply(
        lambda b: {
            "auction": b["auction"],
            "bidder": b["bidder"],
            "price": 0.908 * b["price"],
            "date_time": b["date_time"],
            "extra": b["extra"],
        }
    )


def q2(sdf):
    sdf = sdf.filter(lambda b: b["auction"] % 123 == 0)
    return sdf.apply(lambda b: {"auction": b["auction"], "price": b["price"]})


QUERIES = {"q0": q0, "q1": q1, "q2": q2}


def expected_row(query, bid):
    """The row a query yields for one bid, or None: the reference for --verify."""
    if query == "q2":
        if bid["auction"] % 123 != 0:
            return None
        return {"auction": bid["auction"], "price": bid["price"]}
    row = {k: bid[k] for k in ("auction", "bidder", "price", "date_time", "extra")}
    if query == "q1":
        row["price"] = 0.908 * bid["price"]
    return row


def read_all(bootstrap, topic, timeout=60.0):
    """Every record of a one-partition-or-more topic, with a plain consumer (used by --verify only)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"verify-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10)
        parts = sorted(meta.topics[topic].partitions)
        ends = {}
        for p in parts:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in parts if ends[p] > 0])
        remaining = sum(ends.values())
        out = []
        deadline = time.monotonic() + timeout
        while remaining > 0 and time.monotonic() < deadline:
            for msg in consumer.consume(10000, 1.0):
                if msg.error():
                    raise RuntimeError(msg.error())
                if msg.offset() < ends[msg.partition()]:
                    out.append(msg.value())
                    remaining -= 1
        if remaining:
            raise RuntimeError(f"{topic}: {remaining} records not read within {timeout}s")
        return out
    finally:
        consumer.close()


def topic_size(bootstrap, topic):
    """The number of records in a topic, from its watermarks."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"size-{uuid.uuid4().hex}"})
    try:
        meta = consumer.list_topics(topic, timeout=10)
        total = 0
        for p in meta.topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("query", choices=sorted(QUERIES))
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="nexmark_bid", help="the bid topic")
    parser.add_argument("--expected", type=int, required=True, help="bids to process before stopping")
    parser.add_argument("--output-topic", help="default: <topic>-quix-<query>-<random>")
    parser.add_argument("--idle-timeout", type=float, default=60.0,
                        help="give up when no message arrived for this long (seconds)")
    parser.add_argument("--verify", action="store_true",
                        help="after timing, check the output topic against the input, row by row")
    parser.add_argument("--loglevel", default="WARNING")
    args = parser.parse_args()

    run_id = uuid.uuid4().hex[:8]
    output_name = args.output_topic or f"{args.topic}-quix-{args.query}-{run_id}"
    state_dir = tempfile.mkdtemp(prefix="quix-state-")

    processed = 0
    first = last = None
    expected = args.expected

    # Called by quixstreams after each input message went through the whole dataframe
    # (filtered out or produced): counts bids, times the run and stops it.
    def on_message_processed(topic, partition, offset):
        nonlocal processed, first, last
        processed += 1
        if processed == 1:
            first = time.perf_counter()
        if processed >= expected:
            last = time.perf_counter()
            app.stop()

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=f"quix-nexmark-{args.query}-{run_id}",
        auto_offset_reset="earliest",
        # tansu has no transactions, so no exactly-once; at-least-once is quixstreams' default.
        processing_guarantee="at-least-once",
        use_changelog_topics=False,  # the queries are stateless
        state_dir=state_dir,
        loglevel=args.loglevel,
        on_message_processed=on_message_processed,
    )
    input_topic = app.topic(args.topic, value_deserializer="json")
    output_topic = app.topic(
        output_name,
        value_serializer="json",
        config=TopicConfig(num_partitions=1, replication_factor=1),
    )

    sdf = app.dataframe(input_topic)
    sdf = QUERIES[args.query](sdf)
    sdf.to_topic(output_topic)

    # `timeout` stops the app only when no message arrived for that long (a safety net);
    # the normal stop is app.stop() above once every expected bid was processed.
    app.run(timeout=args.idle_timeout, collect=False)
    done = time.perf_counter()  # run() returns after the final checkpoint: output flushed, offsets committed
    cpu = time.process_time() - CPU_START
    shutil.rmtree(state_dir, ignore_errors=True)

    if processed < expected or first is None:
        print(json.dumps({"query": args.query, "error": f"processed {processed} of {expected} bids"}))
        sys.exit(1)

    output_rows = topic_size(args.bootstrap, output_name)
    seconds = done - first
    result = {
        "query": args.query,
        "events": processed,
        "seconds": round(seconds, 3),
        "events_per_second": round(processed / seconds),
        "output_rows": output_rows,
        "last_processed_seconds": round(last - first, 3),
        "wall_seconds": round(done - WALL_START, 3),
        "wall_events_per_second": round(processed / (done - WALL_START)),
        "cpu_seconds": round(cpu, 3),
        "output_topic": output_name,
    }

    if args.verify:
        bids = [json.loads(v) for v in read_all(args.bootstrap, args.topic)[:expected]]
        want = [r for r in (expected_row(args.query, b) for b in bids) if r is not None]
        got = [json.loads(v) for v in read_all(args.bootstrap, output_name)]
        ok = got == want
        result["verified"] = ok
        if not ok:
            result["verify_detail"] = f"expected {len(want)} rows, got {len(got)}"
    print(json.dumps(result), flush=True)
    if args.verify and not result["verified"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
