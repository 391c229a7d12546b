"""Turn samples into what a reader wants: medians, ratios to the best peer, a CSV, a chart."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

from tools import RUNSYNC


def summarise(rows: list[dict]) -> list[dict]:
    """Medians per (data set, direction, tool), with runsync's ratios to the best peer."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["direction"], r["tool"]), []).append(r)
    out = []
    for (dataset, direction, tool), rs in groups.items():
        out.append({"dataset": dataset, "direction": direction, "tool": tool, "runs": len(rs),
                    "MBps": round(statistics.median(r["MBps"] for r in rs), 1),
                    "client_cpu_s_per_GiB": round(statistics.median(r["client_cpu_s_per_GiB"] for r in rs), 2),
                    "client_user_cpu_s_per_GiB": _median(r.get("client_user_cpu_s_per_GiB") for r in rs),
                    "server_cpu_s_per_GiB": round(statistics.median(r["server_cpu_s_per_GiB"] for r in rs), 2)})
    for s in out:
        peers = [p for p in out if p["dataset"] == s["dataset"] and p["direction"] == s["direction"]
                 and p["tool"] not in RUNSYNC]
        if peers:
            fastest = max(peers, key=lambda p: p["MBps"])
            leanest = min(peers, key=lambda p: p["client_cpu_s_per_GiB"])
            s["best_peer"] = fastest["tool"]
            s["speed_vs_best"] = round(s["MBps"] / fastest["MBps"], 2) if fastest["MBps"] else None
            s["cpu_vs_leanest"] = (round(s["client_cpu_s_per_GiB"] / leanest["client_cpu_s_per_GiB"], 2)
                                   if leanest["client_cpu_s_per_GiB"] else None)
            users = [p for p in peers if p.get("client_user_cpu_s_per_GiB")]
            if users and s.get("client_user_cpu_s_per_GiB") is not None:
                least = min(users, key=lambda p: p["client_user_cpu_s_per_GiB"])
                s["user_cpu_vs_leanest"] = round(s["client_user_cpu_s_per_GiB"] / least["client_user_cpu_s_per_GiB"], 2)
    return sorted(out, key=lambda s: (s["dataset"], s["direction"], -s["MBps"]))


def _median(values) -> float | None:
    """The median of the values given (samples of older runs have no user CPU: None)."""
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 2) if present else None


def write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def markdown(summary: list[dict]) -> str:
    lines = ["| data set | dir | tool | MB/s | client CPU-s/GiB | of it user | server CPU-s/GiB | speed / best peer "
             "| CPU / leanest peer | user CPU / leanest peer's |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        mark = "**" if s["tool"] in RUNSYNC else ""
        lines.append(f"| {s['dataset']} | {s['direction']} | {mark}{s['tool']}{mark} | {s['MBps']} | "
                     f"{s['client_cpu_s_per_GiB']} | {'' if s.get('client_user_cpu_s_per_GiB') is None else s['client_user_cpu_s_per_GiB']} | "
                     f"{s['server_cpu_s_per_GiB']} | "
                     f"{s.get('speed_vs_best', '') if s['tool'] in RUNSYNC else ''} | "
                     f"{s.get('cpu_vs_leanest', '') if s['tool'] in RUNSYNC else ''} | "
                     f"{s.get('user_cpu_vs_leanest', '') if s['tool'] in RUNSYNC else ''} |")
    return "\n".join(lines)


def chart(path: Path, summary: list[dict]) -> None:
    """Grouped bars: MB/s per tool, one group per data set and direction."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((s["dataset"], s["direction"]) for s in summary))
    tools = list(dict.fromkeys(s["tool"] for s in summary))
    width = 0.8 / max(1, len(tools))
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(groups)), 5))
    for i, tool in enumerate(tools):
        values = [next((s["MBps"] for s in summary if (s["dataset"], s["direction"]) == g and s["tool"] == tool), 0)
                  for g in groups]
        ax.bar([x + i * width for x in range(len(groups))], values, width, label=tool,
               hatch="//" if tool in RUNSYNC else None)
    ax.set_xticks([x + width * (len(tools) - 1) / 2 for x in range(len(groups))])
    ax.set_xticklabels([f"{d}\n{direction}" for d, direction in groups], fontsize=8)
    ax.set_ylabel("MB/s (median)")
    ax.set_title("runsync and peers on one local SeaweedFS")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
