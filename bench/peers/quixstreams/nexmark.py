"""Nexmark with quixstreams, over the topics that `eddy bench load-nexmark` fills.

Usage: python nexmark.py QUERY --bootstrap HOST:PORT --topic PREFIXbid [--expected N] [--verify]
(--expected, the bids to process, is required by the stateless queries only)

Stateless queries (q0, q1, q2, q14, q21, q22): read the bid topic from the earliest offset with a fresh consumer
group, apply the query with a StreamingDataFrame, write the result rows as JSON to a fresh output
topic, stop once N bids were processed, and print one JSON line with the timings.

Stateful queries (q3, q4, q5, q7, q8, q11, q15, q16, q17): read PREFIXperson, PREFIXauction and/or PREFIXbid from the
earliest offsets, run until no message arrived for --idle-stop seconds, check the output topic
against the same query computed in plain Python over the inputs, and print one JSON line.
"""

import time

WALL_START = time.perf_counter()
CPU_START = time.process_time()

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import uuid  # noqa: E402

from quixstreams import Application  # noqa: E402
from quixstreams.models import TopicConfig  # noqa: E402

# The stateless queries, as Eddy defines them (crates/eddy/src/nexmark.rs):
#   q0: SELECT auction, bidder, price, date_time, extra FROM bid
#   q1: SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid
#   q2: SELECT auction, price FROM bid WHERE auction % 123 = 0
#   q14: a price in euros, the time of day of the bid and the c's in its `extra`, for prices
#        between 1 and 50 million
#   q21: the channel id, from the channel's name or from the URL's `channel_id=` parameter
#   q22: the first three directories of the URL


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


def q14_row(b):
    price = 0.908 * b["price"]
    if not 1_000_000 < price < 50_000_000:
        return None
    hour = (b["date_time"] // 3_600_000) % 24
    if 8 <= hour <= 18:
        time_type = "dayTime"
    elif hour <= 6 or hour >= 20:
        time_type = "nightTime"
    else:
        time_type = "otherTime"
    return {
        "auction": b["auction"],
        "bidder": b["bidder"],
        "price": price,
        "bid_time_type": time_type,
        "date_time": b["date_time"],
        "extra": b["extra"],
        "c_counts": b["extra"].count("c"),
    }


def q14(sdf):
    return sdf.apply(q14_row).filter(lambda r: r is not None)


CHANNEL_IDS = {"apple": "0", "google": "1", "facebook": "2", "baidu": "3"}
CHANNEL_ID_IN_URL = re.compile(r"(&|^)channel_id=([^&]*)")


def q21_row(b):
    found = CHANNEL_ID_IN_URL.search(b["url"])
    in_url = found.group(2) if found else None
    channel = b["channel"].lower()
    if in_url is None and channel not in CHANNEL_IDS:
        return None
    return {
        "auction": b["auction"],
        "bidder": b["bidder"],
        "price": b["price"],
        "channel": b["channel"],
        "channel_id": CHANNEL_IDS.get(channel, in_url),
    }


def q21(sdf):
    return sdf.apply(q21_row).filter(lambda r: r is not None)


def q22_row(b):
    # SQL's split_part(url, '/', n): the n-th piece (1-based), '' past the last
    parts = b["url"].split("/")
    piece = lambda n: parts[n - 1] if n <= len(parts) else ""  # noqa: E731
    return {
        "auction": b["auction"],
        "bidder": b["bidder"],
        "price": b["price"],
        "channel": b["channel"],
        "dir1": piece(4),
        "dir2": piece(5),
        "dir3": piece(6),
    }


def q22(sdf):
    return sdf.apply(q22_row)


QUERIES = {"q0": q0, "q1": q1, "q2": q2, "q14": q14, "q21": q21, "q22": q22}


def expected_row(query, bid):
    """The row a query yields for one bid, or None: the reference for --verify."""
    if query == "q14":
        return q14_row(bid)
    if query == "q21":
        return q21_row(bid)
    if query == "q22":
        return q22_row(bid)
    if query == "q2":
        if bid["auction"] % 123 != 0:
            return None
        return {"auction": bid["auction"], "price": bid["price"]}
    row = {k: bid[k] for k in ("auction", "bidder", "price", "date_time", "extra")}
    if query == "q1":
        row["price"] = 0.908 * bid["price"]
    return row


def read_all(bootstrap, topic, timeout=60.0, with_keys=False):
    """Every record of a one-partition-or-more topic, with a plain consumer: values, or (key, value)
    pairs with `with_keys` (used by --verify and the stateful queries' references only)."""
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
        # `timeout` bounds the wait for the next records, not the whole read
        deadline = time.monotonic() + timeout
        while remaining > 0 and time.monotonic() < deadline:
            for msg in consumer.consume(10000, 1.0):
                if msg.error():
                    raise RuntimeError(msg.error())
                if msg.offset() < ends[msg.partition()]:
                    out.append((msg.key(), msg.value()) if with_keys else msg.value())
                    remaining -= 1
                    deadline = time.monotonic() + timeout
        if remaining:
            raise RuntimeError(f"{topic}: {remaining} records left, none read for {timeout}s")
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


# --- The stateful queries (q3, q4, q5, q7, q8, q11, q15, q16, q17), as Eddy defines them (STATEFUL_QUERIES in
# crates/eddy/src/nexmark.rs). Each has a builder (the quixstreams dataframe), a reference (the
# result computed in plain Python from the input topics) and a reader (the result as the output
# topic holds it, comparable with the reference). Where Eddy repartitions an input (the bid stream
# has no declared key, auctions are keyed by id), the dataframe re-keys it (`group_by`); on a
# one-partition topic quixstreams does that in memory, without a repartition topic.

Q3_STATES = ("or", "id", "ca")
# Eddy's windows are aligned to the epoch like quixstreams'; both use the record timestamp, which
# `eddy bench load-nexmark` sets to the event's date_time.
Q5_SIZE_MS, Q5_ADVANCE_MS = 10_000, 2_000
Q7_SIZE_MS = 10_000
Q8_WITHIN_MS = 10_000
Q4_WITHIN_MS = 60_000
# Eddy's GRACE PERIOD of the windowed joins: how long join state is kept in event time.
JOIN_GRACE_MS = 60_000


def build_q3(app, topics):
    """Auctions of category 10 joined with their seller (a table) in OR, ID or CA."""
    persons = app.dataframe(topics["person"]).filter(lambda p: p["state"] in Q3_STATES)
    auctions = app.dataframe(topics["auction"]).filter(lambda a: a["category"] == 10)
    auctions = auctions.group_by("seller", name="q3-auction-by-seller")
    return auctions.join_asof(
        persons,
        how="inner",
        on_merge=lambda a, p: {"name": p["name"], "city": p["city"], "state": p["state"], "id": a["id"]},
    )


def build_q4(app, topics):
    """The auction-bid join (bids between the auction's start and expiry), the highest bid per
    auction, then the average of those per category, retracting an auction's previous maximum."""
    auctions = app.dataframe(topics["auction"])
    bids = app.dataframe(topics["bid"]).group_by("auction", name="q4-bid-by-auction")
    joined = auctions.join_interval(
        bids,
        how="inner",
        on_merge=lambda a, b: {
            "category": a["category"], "start": a["date_time"], "expires": a["expires"],
            "price": b["price"], "bid_time": b["date_time"],
        },
        backward_ms=0,
        forward_ms=Q4_WITHIN_MS,
        grace_ms=JOIN_GRACE_MS,
        name="q4-auction-bid",
    )
    joined = joined.filter(lambda r: r["start"] <= r["bid_time"] <= r["expires"])

    def highest(row, state):
        # per auction (the key): emit the change of its maximum, or nothing
        old = state.get("max")
        if old is not None and row["price"] <= old:
            return None
        state.set("max", row["price"])
        return {"category": row["category"], "old": old, "new": row["price"]}

    changes = joined.apply(highest, stateful=True).filter(lambda c: c is not None)
    changes = changes.group_by("category", name="q4-max-by-category")

    def average(change, state):
        # per category: the sum and count of its auctions' maxima
        total, count = state.get("sum", 0), state.get("count", 0)
        if change["old"] is None:
            total, count = total + change["new"], count + 1
        else:
            total += change["new"] - change["old"]
        state.set("sum", total)
        state.set("count", count)
        return {"category": change["category"], "avg_final": total / count}

    return changes.apply(average, stateful=True)


def build_q5(app, topics):
    """Bids per auction per hopping window (10 s, every 2 s), every update emitted."""
    bids = app.dataframe(topics["bid"]).group_by("auction", name="q5-bid-by-auction")
    return bids.hopping_window(Q5_SIZE_MS, Q5_ADVANCE_MS).count().current()


def build_q7(app, topics):
    """The highest bid per auction per tumbling 10 s window, every update emitted."""
    from quixstreams.dataframe.windows import Max

    bids = app.dataframe(topics["bid"]).group_by("auction", name="q7-bid-by-auction")
    return bids.tumbling_window(Q7_SIZE_MS).agg(price=Max("price")).current()


def build_q8(app, topics):
    """Persons joined with the auctions they sell within 10 s either side (stream-stream)."""
    persons = app.dataframe(topics["person"])
    auctions = app.dataframe(topics["auction"]).group_by("seller", name="q8-auction-by-seller")
    return persons.join_interval(
        auctions,
        how="inner",
        on_merge=lambda p, a: {"id": p["id"], "name": p["name"], "reserve": a["reserve"]},
        backward_ms=Q8_WITHIN_MS,
        forward_ms=Q8_WITHIN_MS,
        grace_ms=JOIN_GRACE_MS,
        name="q8-person-auction",
    )


Q11_GAP_MS = 10_000
DAY_MS = 86_400_000


def price_ranks(b):
    """A bid with its price range marked: rank columns hold 1 when the price is in the range,
    else None, for Count."""
    price = b["price"]
    rank = 1 if price < 10_000 else 2 if price < 1_000_000 else 3
    row = dict(b)
    for r in (1, 2, 3):
        row[f"r{r}"] = 1 if rank == r else None
    return row


def bid_statistics(bid, state):
    """Eddy's q15/q16 columns of the bid's group (the key) and day, updated with the bid and
    emitted. quixstreams has no COUNT(DISTINCT): the group's state marks each (day, bidder or
    auction, price range) seen under a key of its own, so a bid costs a few state lookups
    instead of reading and writing every value seen."""
    day = bid["date_time"] // DAY_MS
    rank = "rank1" if bid["price"] < 10_000 else "rank2" if bid["price"] < 1_000_000 else "rank3"
    row = state.get(f"{day}:row") or dict.fromkeys(STATISTICS_COLUMNS["q15"], 0)
    row["total_bids"] += 1
    row[f"{rank}_bids"] += 1
    for kind, value in (("bidders", bid["bidder"]), ("auctions", bid["auction"])):
        for scope in ("total", rank):
            seen = f"{day}:{scope}_{kind}:{value}"
            if not state.exists(seen):
                state.set(seen, 1)
                row[f"{scope}_{kind}"] += 1
    state.set(f"{day}:row", row)
    return {"start": day * DAY_MS, **row}


def build_q11(app, topics):
    """Bids per bidder session (a gap of 10 s), every update emitted."""
    from quixstreams.dataframe.windows import Count

    bids = app.dataframe(topics["bid"]).group_by("bidder", name="q11-bid-by-bidder")
    return bids.session_window(Q11_GAP_MS).agg(bid_count=Count()).current()


def build_q15(app, topics):
    """Bidding statistics per day (all bids under one key)."""
    bids = app.dataframe(topics["bid"]).group_by(lambda b: "all", name="q15-bid-all")
    return bids.apply(bid_statistics, stateful=True)


def build_q16(app, topics):
    """Bidding statistics per channel and day."""
    bids = app.dataframe(topics["bid"]).group_by("channel", name="q16-bid-by-channel")
    return bids.apply(bid_statistics, stateful=True)


def build_q17(app, topics):
    """Auction statistics per day: bids per price range, min, max, mean and sum of the price."""
    from quixstreams.dataframe.windows import Count, Max, Mean, Min, Sum

    bids = app.dataframe(topics["bid"]).apply(price_ranks)
    bids = bids.group_by("auction", name="q17-bid-by-auction")
    return bids.tumbling_window(DAY_MS).agg(
        total_bids=Count(), rank1_bids=Count("r1"), rank2_bids=Count("r2"), rank3_bids=Count("r3"),
        min_price=Min("price"), max_price=Max("price"), avg_price=Mean("price"), sum_price=Sum("price"),
    ).current()


# The columns of q15-q17 that the reference computes and the reader compares.
STATISTICS_COLUMNS = {
    "q15": ["total_bids", "rank1_bids", "rank2_bids", "rank3_bids", "total_bidders", "rank1_bidders",
            "rank2_bidders", "rank3_bidders", "total_auctions", "rank1_auctions", "rank2_auctions",
            "rank3_auctions"],
    "q17": ["total_bids", "rank1_bids", "rank2_bids", "rank3_bids", "min_price", "max_price", "sum_price"],
}
STATISTICS_COLUMNS["q16"] = STATISTICS_COLUMNS["q15"]


def statistics_reference(query, bids):
    """q15-q17 in plain Python: (group key as the reader sees it, window start) -> columns."""
    groups = {}
    for b in map(price_ranks, bids):
        key = {"q15": "all", "q16": b["channel"], "q17": b["auction"]}[query]
        group = groups.setdefault((key, b["date_time"] - b["date_time"] % DAY_MS), [])
        group.append(b)
    result = {}
    for group_key, rows in groups.items():
        prices = [b["price"] for b in rows]
        columns = {"total_bids": len(rows), "min_price": min(prices), "max_price": max(prices),
                   "sum_price": sum(prices), "total_bidders": len({b["bidder"] for b in rows}),
                   "total_auctions": len({b["auction"] for b in rows})}
        for r in (1, 2, 3):
            in_range = [b for b in rows if b[f"r{r}"]]
            columns[f"rank{r}_bids"] = len(in_range)
            columns[f"rank{r}_bidders"] = len({b["bidder"] for b in in_range})
            columns[f"rank{r}_auctions"] = len({b["auction"] for b in in_range})
        result[group_key] = tuple(columns[c] for c in STATISTICS_COLUMNS[query])
    return result


def windows_of(time_ms, size_ms, advance_ms):
    """The starts of the windows (epoch-aligned, `advance_ms` apart) that contain `time_ms`."""
    last = time_ms - time_ms % advance_ms
    return [s for s in range(last, time_ms - size_ms, -advance_ms) if s <= time_ms < s + size_ms]


def reference(query, inputs):
    """The result of `query` over the inputs, in plain Python, in the reader's shape."""
    persons, auctions, bids = inputs.get("person", []), inputs.get("auction", []), inputs.get("bid", [])
    if query == "q3":
        by_id = {p["id"]: p for p in persons}
        rows = []
        for a in auctions:
            p = by_id.get(a["seller"])
            # join_asof matches a person whose timestamp is at or before the auction's; the
            # generator also picks sellers among the next few persons to be created, which Eddy's
            # join (the table as read so far) and DataFusion's (all persons) do match.
            if (a["category"] == 10 and p is not None and p["state"] in Q3_STATES
                    and p["date_time"] <= a["date_time"]):
                rows.append((p["name"], p["city"], p["state"], a["id"]))
        return sorted(rows)
    if query == "q4":
        by_id = {a["id"]: a for a in auctions}
        final = {}
        for b in bids:
            a = by_id.get(b["auction"])
            if a is not None and a["date_time"] <= b["date_time"] <= a["expires"]:
                final[a["id"]] = max(final.get(a["id"], b["price"]), b["price"])
        sums = {}
        for auction_id, price in final.items():
            total, count = sums.get(by_id[auction_id]["category"], (0, 0))
            sums[by_id[auction_id]["category"]] = (total + price, count + 1)
        return {category: total / count for category, (total, count) in sums.items()}
    if query == "q5":
        counts = {}
        for b in bids:
            for start in windows_of(b["date_time"], Q5_SIZE_MS, Q5_ADVANCE_MS):
                counts[(b["auction"], start)] = counts.get((b["auction"], start), 0) + 1
        return counts
    if query == "q7":
        highest = {}
        for b in bids:
            window = (b["auction"], b["date_time"] - b["date_time"] % Q7_SIZE_MS)
            highest[window] = max(highest.get(window, b["price"]), b["price"])
        return highest
    if query == "q8":
        by_seller = {}
        for a in auctions:
            by_seller.setdefault(a["seller"], []).append(a)
        rows = []
        for p in persons:
            for a in by_seller.get(p["id"], []):
                if abs(a["date_time"] - p["date_time"]) <= Q8_WITHIN_MS:
                    rows.append((p["id"], p["name"], a["reserve"]))
        return sorted(rows)
    if query == "q11":
        # quixstreams' sessions: a bid at least one gap after its session's last starts another
        sessions, last = {}, {}
        for b in bids:
            bidder, t = b["bidder"], b["date_time"]
            session = last.get(bidder)
            if session is None or t >= session[1] + Q11_GAP_MS:
                start, end = t, t
            else:
                start, end = session[0], max(session[1], t)
            last[bidder] = (start, end)
            sessions[(bidder, start)] = sessions.get((bidder, start), 0) + 1
        return sessions
    if query in STATISTICS_COLUMNS:
        return statistics_reference(query, bids)
    raise ValueError(query)


def result_of(query, records):
    """The output topic's (key, value) records, in the reference's shape: the last update of each
    window or group for tables, every row for streams."""
    if query in ("q3", "q8"):
        fields = ("name", "city", "state", "id") if query == "q3" else ("id", "name", "reserve")
        return sorted(tuple(json.loads(v)[f] for f in fields) for _, v in records)
    latest = {}
    for key, value in records:
        row = json.loads(value)
        if query == "q11":
            latest[(json.loads(key), row["start"])] = row["bid_count"]
        elif query in STATISTICS_COLUMNS:
            columns = tuple(row[c] for c in STATISTICS_COLUMNS[query])
            latest[(json.loads(key), row["start"])] = columns
        elif query == "q4":
            latest[row["category"]] = row["avg_final"]
        else:
            column = "value" if query == "q5" else "price"
            latest[(json.loads(key), row["start"])] = row[column]
    return latest


def same_result(query, got, want):
    if query == "q4":
        return got.keys() == want.keys() and all(abs(got[k] - want[k]) <= 1e-9 * abs(want[k]) for k in want)
    return got == want


# Which input topics each stateful query reads (its events, as Eddy counts them).
STATEFUL = {
    "q3": (build_q3, ("person", "auction")),
    "q4": (build_q4, ("auction", "bid")),
    "q5": (build_q5, ("bid",)),
    "q7": (build_q7, ("bid",)),
    "q8": (build_q8, ("person", "auction")),
    "q11": (build_q11, ("bid",)),
    "q15": (build_q15, ("bid",)),
    "q16": (build_q16, ("bid",)),
    "q17": (build_q17, ("bid",)),
}


def ensure_retention_reported(bootstrap, topics):
    """quixstreams copies an input topic's `retention.ms` to its repartition and changelog topics
    and fails when the broker does not report it; tansu reports only the configs a topic was
    created or altered with. Sets `retention.ms=-1` (keep everything, as tansu does anyway) on
    the input topics that lack it."""
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for topic in topics:
        (future,) = admin.describe_configs([ConfigResource("topic", topic)]).values()
        if "retention.ms" in future.result():
            continue
        entry = ConfigEntry("retention.ms", "-1", incremental_operation=AlterConfigOpType.SET)
        resource = ConfigResource("topic", topic, incremental_configs=[entry])
        for future in admin.incremental_alter_configs([resource]).values():
            future.result()


def run_stateful(args):
    """Runs a stateful query from the earliest offsets until the app has been idle for
    `--idle-stop` seconds, then checks the output topic against the reference."""
    build, input_names = STATEFUL[args.query]
    prefix = args.topic[: -len("bid")] if args.topic.endswith("bid") else args.topic
    run_id = uuid.uuid4().hex[:8]
    output_name = args.output_topic or f"{prefix}quix-{args.query}-{run_id}"
    state_dir = tempfile.mkdtemp(prefix="quix-state-")
    ensure_retention_reported(args.bootstrap, [f"{prefix}{name}" for name in input_names])

    processed = 0
    first = last = None

    def on_message_processed(topic, partition, offset):
        # every message of every input topic (and repartition topic, with more than one
        # partition): the run ends at the last
        nonlocal processed, first, last
        processed += 1
        last = time.perf_counter()
        if first is None:
            first = last

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=f"quix-nexmark-{args.query}-{run_id}",
        auto_offset_reset="earliest",
        processing_guarantee="at-least-once",
        # quixstreams' state changelogs, like Eddy's (which writes one for every store)
        use_changelog_topics=True,
        state_dir=state_dir,
        loglevel=args.loglevel,
        on_message_processed=on_message_processed,
    )
    topics = {
        name: app.topic(f"{prefix}{name}", key_deserializer="json", value_deserializer="json")
        for name in input_names
    }
    output_topic = app.topic(
        output_name,
        key_serializer="json",
        value_serializer="json",
        config=TopicConfig(num_partitions=1, replication_factor=1),
    )
    build(app, topics).to_topic(output_topic)

    # Stop once the app has been idle for --idle-stop seconds after its first message (joining the
    # consumer group can take longer than that), or after --idle-timeout without any message.
    started = time.perf_counter()
    stop_watching = threading.Event()

    def watch():
        while not stop_watching.wait(0.1):
            now = time.perf_counter()
            if (first is None and now - started > args.idle_timeout) or (
                last is not None and now - last > args.idle_stop
            ):
                app.stop()
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    app.run()
    stop_watching.set()
    done = time.perf_counter()
    cpu = time.process_time() - CPU_START
    shutil.rmtree(state_dir, ignore_errors=True)
    if first is None:
        print(json.dumps({"query": args.query, "error": "no message processed"}))
        sys.exit(1)

    inputs = {name: [json.loads(v) for v in read_all(args.bootstrap, f"{prefix}{name}")] for name in input_names}
    events = sum(len(records) for records in inputs.values())
    seconds = last - first
    output = read_all(args.bootstrap, output_name, with_keys=True)
    got, want = result_of(args.query, output), reference(args.query, inputs)
    result = {
        "query": args.query,
        "events": events,
        "input_messages_processed": processed,
        "seconds": round(seconds, 3),
        "events_per_second": round(events / seconds),
        "output_records": len(output),
        "result_rows": len(got),
        "expected_rows": len(want),
        "wall_seconds": round(done - WALL_START - args.idle_stop, 3),
        "cpu_seconds": round(cpu, 3),
        "output_topic": output_name,
        "verified": same_result(args.query, got, want),
    }
    if not result["verified"]:
        result["verify_detail"] = difference(got, want)
    print(json.dumps(result), flush=True)
    if not result["verified"]:
        sys.exit(VERIFY_FAILED)


def difference(got, want):
    """What differs between a result and its reference, in a few words."""
    from collections import Counter

    if isinstance(want, dict):
        missing = [k for k in want if k not in got]
        wrong = [k for k in want if k in got and got[k] != want[k]]
        extra = [k for k in got if k not in want]
        return (f"{len(missing)} missing (first {missing[:3]}), {len(wrong)} different "
                f"(first {[(k, got[k], want[k]) for k in wrong[:3]]}), {len(extra)} unexpected")
    got_rows, want_rows = Counter(got), Counter(want)
    missing, extra = list((want_rows - got_rows).elements()), list((got_rows - want_rows).elements())
    return f"{len(missing)} rows missing (first {missing[:3]}), {len(extra)} unexpected (first {extra[:3]})"


# Exit status of a run whose output differs from the reference (run.sh reports it and goes on).
VERIFY_FAILED = 3


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("query", choices=sorted(QUERIES) + sorted(STATEFUL))
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="nexmark_bid", help="the bid topic")
    parser.add_argument("--expected", type=int,
                        help="stateless queries: bids to process before stopping (required)")
    parser.add_argument("--output-topic", help="default: <topic>-quix-<query>-<random>")
    parser.add_argument("--idle-timeout", type=float, default=60.0,
                        help="give up when no message arrived for this long (seconds)")
    parser.add_argument("--verify", action="store_true",
                        help="after timing, check the output topic against the input, row by row")
    parser.add_argument("--loglevel", default="WARNING")
    parser.add_argument("--idle-stop", type=float, default=5.0,
                        help="stateful queries: stop once no message arrived for this long (seconds)")
    args = parser.parse_args()
    if args.query in STATEFUL:
        run_stateful(args)
        return
    if args.expected is None:
        parser.error(f"{args.query} needs --expected (the bids to process)")

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
        sys.exit(VERIFY_FAILED)


if __name__ == "__main__":
    main()
