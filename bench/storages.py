#!/usr/bin/env python3
"""Accuracy at equal bytes across row storages.

Runs `kvsketch bench --csv` once per storage configuration (f16; q8, q4, q4a;
keys and values mixed; rotation on and off) on a workload and prints, per
method and budget, the f16 error, the best quantized configuration and the
ratio f16 / best (the issue's target: >= 1.5).

Usage: bench/storages.py [--build build/release] [--budgets 64,128]
                         [--methods ...] [-- workload args for bench]
e.g.   bench/storages.py -- --synthetic d128 --length 16384
"""
import argparse
import csv
import io
import subprocess
import sys

CONFIGS = [
    ("f16", ["--storage", "f16"]),
    ("q8", ["--storage", "q8"]),
    ("q4", ["--storage", "q4"]),
    ("q4a", ["--storage", "q4a"]),
    ("q8/q4", ["--storage-k", "q8", "--storage-v", "q4"]),
    ("q4/q8", ["--storage-k", "q4", "--storage-v", "q8"]),
    ("q8 norot", ["--storage", "q8", "--rotate", "off"]),
    ("q4 norot", ["--storage", "q4", "--rotate", "off"]),
    ("q8/q4 norot", ["--storage-k", "q8", "--storage-v", "q4", "--rotate", "off"]),
]


def main():
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build/release")
    ap.add_argument("--budgets", default="64,128")
    ap.add_argument("--methods",
                    default="window,uniform,balance,taylor,hashed,h2o,tova,risk,blurry")
    a = ap.parse_args(argv)
    err = {}  # (method, budget) -> {config: mean}
    for name, flags in CONFIGS:
        cmd = [a.build + "/kvsketch", "bench", "-q", "--csv", "--method",
               a.methods, "--budget-tokens", a.budgets] + flags + extra
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        for row in csv.DictReader(io.StringIO(out)):
            key = (row["method"], int(row["budget_tokens"]))
            err.setdefault(key, {})[name] = float(row["mean_rel_err"])
    print("workload: " + (" ".join(extra) or "default synthetic"))
    print()
    print("| method | budget | f16 | " + " | ".join(n for n, _ in CONFIGS[1:]) +
          " | best | f16 / best |")
    print("|---|---|---|" + "---|" * (len(CONFIGS) - 1) + "---|---|")
    for (m, b), e in sorted(err.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        q = {n: v for n, v in e.items() if n != "f16"}
        best = min(q, key=q.get)
        cells = " | ".join("%.4f" % e[n] for n, _ in CONFIGS[1:])
        print("| %s | %d | %.4f | %s | %s | %.2f |" %
              (m, b, e["f16"], cells, best, e["f16"] / q[best]))


if __name__ == "__main__":
    main()
