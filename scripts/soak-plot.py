#!/usr/bin/env python3
"""Draw a soak report (ant-quic-perf soak --json-file) as a PNG: RSS, descriptors and connections
over time, the start and the settled end marked. Usage: soak-plot.py SOAK.json OUT.png"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: soak-plot.py SOAK.json OUT.png", file=sys.stderr)
        return 2
    with open(sys.argv[1], encoding="utf-8") as f:
        report = json.load(f)
    samples = [report["start"]] + report["samples"] + [report["end"]]
    t = [s["seconds"] / 60 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    series = [
        ("rss_mb", "RSS (MB)"),
        ("fds", "open descriptors"),
        ("connections_active", "quic_connections_active"),
    ]
    for ax, (key, label) in zip(axes, series):
        ax.plot(t, [s[key] for s in samples], marker="o", markersize=3)
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("minutes (last point: load stopped, node settled)")
    fig.suptitle(
        f"ant-quic soak: {report['idle']} idle connections + {report['churn_per_second']} connections/s churn, "
        f"{report['minutes']:g} min"
    )
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=100)
    print(f"soak-plot: wrote {sys.argv[2]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
