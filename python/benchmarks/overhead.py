"""Overhead of a Python Session.attend call over the same C++ call.

    PYTHONPATH=build/release/python /usr/bin/python3 python/benchmarks/overhead.py

A 1-layer, 8-head, head_dim-64 session holding `--tokens` tokens; the C++
side calls Session::Attend in a loop on the same buffers
(kvsketch._kvsketch._cxx_attend_seconds). Medians of several rounds, one
run: the difference is what Python costs per call.
"""
import argparse
import statistics
import time

import numpy as np

import kvsketch
from kvsketch import _kvsketch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--method", default="window")
    ap.add_argument("--reps", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    s = kvsketch.Session(layers=1, heads=8, head_dim=64, method=a.method,
                         budget_tokens=a.tokens, threads=1)
    rng = np.random.default_rng(0)
    kv = lambda: rng.standard_normal((8, a.tokens, 64)).astype(np.float32)
    s.append(0, kv(), kv())
    q = rng.standard_normal((8, 64)).astype(np.float32)
    py, cxx = [], []
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        for _ in range(a.reps):
            s.attend(0, q)
        py.append((time.perf_counter() - t0) / a.reps)
        cxx.append(_kvsketch._cxx_attend_seconds(s, 0, q, a.reps))
    p, c = statistics.median(py), statistics.median(cxx)
    print(f"kvsketch {kvsketch.__version__} | {a.method}, {a.tokens} tokens, "
          f"1 layer, 8 heads, head_dim 64, 1 thread | median of {a.rounds} "
          f"x {a.reps} calls")
    print(f"python attend {p * 1e6:.2f} us | C++ attend {c * 1e6:.2f} us | "
          f"overhead {(p - c) * 1e6:.2f} us per call")


if __name__ == "__main__":
    main()
