"""Draws docs/nexmark-throughput.png from bench/nexmark-results.csv.

The CSV holds the numbers docs/benchmarks.md reports (query, system, measure, events_per_second);
update both together. Run: python3 bench/chart.py (needs matplotlib; see bench/README.md).
"""

import csv
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main() -> None:
    rows = list(csv.DictReader(open(ROOT / "bench" / "nexmark-results.csv")))
    # q0, q1, q2, ... q22 in numeric order
    queries = sorted({row["query"] for row in rows}, key=lambda q: int(q[1:]))
    series = []
    for row in rows:
        label = f'{row["system"]} ({row["measure"]})'
        if label not in series:
            series.append(label)
    width = 0.8 / len(series)
    figure, axes = plt.subplots(figsize=(14, 4.5))
    for i, label in enumerate(series):
        values = []
        for query in queries:
            match = [
                float(r["events_per_second"])
                for r in rows
                if r["query"] == query and f'{r["system"]} ({r["measure"]})' == label
            ]
            values.append(match[0] if match else 0.0)
        positions = [q + (i - (len(series) - 1) / 2) * width for q in range(len(queries))]
        axes.bar(positions, values, width, label=label)
    axes.set_xticks(range(len(queries)), queries)
    axes.set_ylabel("events per second")
    axes.set_title(
        "Nexmark, 1 000 000 bids, embedded broker, 2 cores, 2026-12-07 (higher is better)"
    )
    # Head room above the tallest bar for a one-line legend.
    tallest = max(float(r["events_per_second"]) for r in rows)
    axes.set_ylim(0, tallest * 1.2)
    axes.legend(loc="upper left", ncol=len(series))
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(ROOT / "docs" / "nexmark-throughput.png", dpi=100)


if __name__ == "__main__":
    main()
