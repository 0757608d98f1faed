#!/usr/bin/python3
"""Turns kvsketch sweeps into PNG plots (matplotlib from Debian:
python3-matplotlib; run with /usr/bin/python3).

  kvsketch bench --csv [--trace DIR] > bench.csv
  for m in ...; for b in ...: kvsketch lm ... --csv > lm_<m>_<b>.csv
  bench/plot.py --bench bench.csv [--lm lm_*.csv] --out plots/
  kvsketch decode --csv > decode.csv; bench/plot.py --decode decode.csv

Writes: error_vs_budget.png (mean relative error vs budget per method,
log-log), attend_vs_retained.png (attend ns/query vs retained items) and,
with --lm, kl_vs_budget.png (mean KL to the full cache vs budget); with
--decode, decode_time.png (time per token vs context, one line per method,
budget and thread count).
"""
import argparse
import csv
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def num(x):
    try:
        v = float(x)
        return v if math.isfinite(v) else None
    except (TypeError, ValueError):
        return None


def read_rows(paths):
    rows = []
    for p in paths:
        with open(p, newline="") as f:
            lines = [ln for ln in f if ln.strip()]
        # lm --csv files repeat the header: keep the first and data rows.
        header = lines[0]
        data = [ln for ln in lines[1:] if ln != header]
        rows += list(csv.DictReader([header] + data))
    return rows


def by_method(rows, x, y):
    series = {}
    for r in rows:
        xv, yv = num(r.get(x)), num(r.get(y))
        if xv is None or yv is None or xv <= 0 or yv <= 0:
            continue
        key = r["method"]
        if r.get("split", "uniform") != "uniform":
            key += " (" + r["split"] + ")"
        series.setdefault(key, []).append((xv, yv))
    return {k: sorted(v) for k, v in series.items()}


def plot(series, xlabel, ylabel, title, path, loglog=True):
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, pts in sorted(series.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                label=name)
    if loglog:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print("wrote", path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", nargs="*", default=[], help="bench --csv files")
    ap.add_argument("--lm", nargs="*", default=[], help="lm --csv files")
    ap.add_argument("--decode", nargs="*", default=[],
                    help="decode --csv files")
    ap.add_argument("--out", default=".", help="output directory")
    a = ap.parse_args()
    if not a.bench and not a.lm and not a.decode:
        ap.error("give --bench, --lm and/or --decode CSV files")
    os.makedirs(a.out, exist_ok=True)
    if a.bench:
        rows = [r for r in read_rows(a.bench) if r["method"] != "exact"]
        workload = rows[0]["workload"] if rows else "?"
        plot(by_method(rows, "budget_tokens", "mean_rel_err"),
             "budget (tokens per KV head)", "mean relative error",
             "error vs budget: " + workload,
             os.path.join(a.out, "error_vs_budget.png"))
        plot(by_method(rows, "retained", "attend_ns_per_query"),
             "retained items per KV head", "attend ns / query",
             "attend time vs retained items: " + workload,
             os.path.join(a.out, "attend_vs_retained.png"))
    if a.lm:
        plot(by_method(read_rows(a.lm), "budget_tokens", "kl_mean"),
             "budget (tokens per KV head)", "mean KL to the full cache",
             "KL vs budget (kvsketch lm --eval)",
             os.path.join(a.out, "kl_vs_budget.png"))
    if a.decode:
        series = {}
        for r in read_rows(a.decode):
            x, y = num(r.get("context")), num(r.get("us_per_token"))
            if x is None or y is None or x <= 0 or y <= 0:
                continue
            key = r["method"]
            if r["method"] != "exact":
                key += " " + r["budget_tokens"]
            key += ", " + r["threads"] + " thr"
            series.setdefault(key, []).append((x, y))
        plot({k: sorted(v) for k, v in series.items()},
             "context (tokens)", "time per token, all layers (us)",
             "decode time vs context (kvsketch decode)",
             os.path.join(a.out, "decode_time.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
