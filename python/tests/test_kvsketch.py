"""pytest suite of the Python package (run by ctest as python_pytest).

KVSKETCH_CLI / KVSKETCH_DRIVE / KVSKETCH_TRACES (set by ctest) name the
kvsketch CLI, the C++ session driver and the bundled traces; tests that need
one skip without it.
"""
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import kvsketch

CLI = os.environ.get("KVSKETCH_CLI")
DRIVE = os.environ.get("KVSKETCH_DRIVE")
TRACES = os.environ.get("KVSKETCH_TRACES")


def rand(shape, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def small(**kw):
    cfg = dict(layers=2, heads=8, kv_heads=4, head_dim=16, budget_tokens=32,
               threads=1)
    cfg.update(kw)
    return kvsketch.Session(**cfg)


def drive(s, k, v, q):
    """Token by token through every layer: append, then attend.
    k, v: [layers][kv, seq, d]; q: [layers][heads, seq, d]."""
    outs = []
    for t in range(k[0].shape[1]):
        for layer in range(len(k)):
            s.append(layer, np.ascontiguousarray(k[layer][:, t:t + 1]),
                     np.ascontiguousarray(v[layer][:, t:t + 1]))
            outs.append(s.attend(layer, np.ascontiguousarray(q[layer][:, t])))
    return np.stack(outs)


def stream(seq, layers=2, heads=8, kv=4, d=16, seed=1):
    k = [rand((kv, seq, d), seed + 10 * i) for i in range(layers)]
    v = [rand((kv, seq, d), seed + 10 * i + 1) for i in range(layers)]
    q = [rand((heads, seq, d), seed + 10 * i + 2, 2.0) for i in range(layers)]
    return k, v, q


def test_bad_arrays_are_value_errors_naming_the_shape():
    s = small()
    k, v = rand((4, 3, 16), 1), rand((4, 3, 16), 2)
    with pytest.raises(ValueError, match="dtype float64"):
        s.append(0, k.astype(np.float64), v)
    with pytest.raises(ValueError, match=r"shape \(4, 3, 8\), expected .*\[4, n, 16\]"):
        s.append(0, k[:, :, :8].copy(), v)
    with pytest.raises(ValueError, match="C-contiguous"):
        s.append(0, k[:, ::2], v[:, ::2])
    with pytest.raises(ValueError, match="numpy array"):
        s.append(0, k.tolist(), v)
    with pytest.raises(ValueError, match="different numbers of tokens"):
        s.append(0, k, v[:, :2].copy())
    with pytest.raises(IndexError, match="layer 2 out of range"):
        s.append(2, k, v)
    with pytest.raises(ValueError, match="one token"):
        s.attend(0, rand((8, 2, 16), 3))
    with pytest.raises(ValueError, match=r"expected .*\[8, 16\]"):
        s.attend(0, rand((4, 16), 3))
    bad = k.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(kvsketch.Error, match="finite"):
        s.append(0, bad, v)
    assert s.stats()["tokens"] == 0  # nothing was appended by any of these
    with pytest.raises(ValueError, match="exactly one"):
        kvsketch.Session(heads=8, head_dim=16)
    with pytest.raises(kvsketch.Error, match="method"):
        kvsketch.Session(heads=8, head_dim=16, budget_tokens=32, method="nope")
    with pytest.raises(kvsketch.BudgetError):
        kvsketch.Session(heads=8, head_dim=16, budget_bytes=1000)


def test_float16_input_equals_its_float32_values():
    k, v, q = stream(40)
    a, b = small(), small()
    half = lambda xs: [x.astype(np.float16) for x in xs]
    exact = lambda xs: [x.astype(np.float16).astype(np.float32) for x in xs]
    np.testing.assert_array_equal(drive(a, half(k), half(v), half(q)),
                                  drive(b, exact(k), exact(v), exact(q)))


def test_prefill_is_causal_attention_and_truncate_rolls_back():
    k, v, q = stream(30, layers=1)
    s = small(layers=1, method="exact", storage="f32", budget_tokens=64)
    out = s.prefill(0, q[0], k[0], v[0])
    assert out.shape == (8, 30, 16)
    # Reference: causal softmax attention in float64.
    kk, vv = np.repeat(k[0], 2, axis=0), np.repeat(v[0], 2, axis=0)
    sc = np.einsum("htd,hsd->hts", q[0].astype(np.float64), kk) / 4.0
    sc += np.triu(np.full((30, 30), -np.inf), 1)
    w = np.exp(sc - sc.max(-1, keepdims=True))
    ref = np.einsum("hts,hsd->htd", w / w.sum(-1, keepdims=True), vv)
    np.testing.assert_allclose(out, ref, atol=2e-5)
    assert s.position(0) == 30
    probe = rand((8, 16), 9)
    before = s.attend(0, probe, learn=False)
    s.append(0, k[0][:, :5].copy(), v[0][:, :5].copy())
    assert not np.array_equal(s.attend(0, probe, learn=False), before)
    s.truncate(30)
    assert s.position(0) == 30
    np.testing.assert_array_equal(s.attend(0, probe, learn=False), before)
    s.reset()
    assert s.stats()["tokens"] == 0 and s.position(0) == 0


def test_save_load_and_fork():
    k, v, q = stream(80)
    s = small()
    drive(s, [x[:, :50] for x in k], [x[:, :50] for x in v],
          [x[:, :50] for x in q])
    state = s.save_bytes()
    f = s.fork()
    rest = lambda xs: [np.ascontiguousarray(x[:, 50:]) for x in xs]
    first = drive(s, rest(k), rest(v), rest(q))
    np.testing.assert_array_equal(drive(f, rest(k), rest(v), rest(q)), first)
    s.load_bytes(state)
    np.testing.assert_array_equal(drive(s, rest(k), rest(v), rest(q)), first)
    bad = bytearray(state)
    bad[len(bad) // 2] ^= 1
    after = s.save_bytes()
    with pytest.raises(kvsketch.StateError, match="checksum"):
        s.load_bytes(bytes(bad))
    assert s.save_bytes() == after
    st = s.stats()
    assert st["tokens"] == 80 and st["accounted_bytes"] <= st["arena_bytes"]


def test_threads_give_identical_results_and_sessions_run_concurrently():
    k, v, q = stream(60)
    one = drive(small(threads=1), k, v, q)
    np.testing.assert_array_equal(drive(small(threads=2), k, v, q), one)
    results = [None, None]

    def run(i):
        results[i] = drive(small(threads=1), k, v, q)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    np.testing.assert_array_equal(results[0], one)
    np.testing.assert_array_equal(results[1], one)


@pytest.mark.skipif(not DRIVE, reason="KVSKETCH_DRIVE (the C++ driver) not set")
@pytest.mark.parametrize("method", ["risk", "window", "h2o"])
def test_python_session_equals_cpp_bit_for_bit(tmp_path, method):
    k, v, q = stream(120, layers=2, heads=4, kv=2, d=16, seed=5)
    rope = {"theta": 10000.0, "layout": "interleaved"}
    kvsketch.write_trace(tmp_path / "t", q, k, v, scale=0.25, rope=rope)
    out = tmp_path / "out.bin"
    subprocess.run([DRIVE, str(tmp_path / "t"), method, "24", "1", str(out)],
                   check=True)
    cpp = np.fromfile(out, dtype=np.float32)
    s = kvsketch.Session(layers=2, heads=4, kv_heads=2, head_dim=16,
                         method=method, budget_tokens=24, threads=1,
                         scale=0.25, rope_theta=10000.0)
    py = drive(s, k, v, q).ravel()
    assert py.shape == cpp.shape
    assert py.tobytes() == cpp.tobytes()


def test_trace_io_and_evaluate_on_arrays(tmp_path):
    k, v, q = stream(200, layers=2, heads=4, kv=2, d=16, seed=7)
    kvsketch.write_trace(tmp_path / "t", q, k, v)
    t = kvsketch.read_trace(tmp_path / "t")
    assert t.layers == 2 and t.scale == pytest.approx(0.25)
    for a, b in zip(t.q + t.k + t.v, q + k + v):
        np.testing.assert_array_equal(a, b)
    row = kvsketch.evaluate(q, k, v, method="window", budget_tokens=32)
    assert row["method"] == "window" and row["positions"] > 0
    assert 0 < row["mean_rel_err"] < 1 and row["error"] is None
    same = kvsketch.evaluate(traces=t, method="window", budget_tokens=32)
    assert same["mean_rel_err"] == row["mean_rel_err"]
    rows = kvsketch.evaluate(q, k, v, method=["exact", "window", "risk"],
                             budget_tokens=[32, 64], threads=1)
    assert [(r["budget_tokens"], r["method"]) for r in rows] == [
        (32, "exact"), (32, "window"), (32, "risk"),
        (64, "exact"), (64, "window"), (64, "risk")]
    assert rows[0]["mean_rel_err"] < 1e-3  # exact
    with pytest.raises(ValueError, match="layer 1"):
        kvsketch.evaluate(q, k[:1] + [k[1][:, :100].copy()], v)
    with pytest.raises(kvsketch.Error, match="method"):
        kvsketch.evaluate(q, k, v, method="nope")


def _fmt(x):
    return float(f"{x:.6g}")


@pytest.mark.skipif(not (CLI and TRACES), reason="CLI or bundled traces absent")
def test_evaluate_equals_bench_on_the_bundled_traces():
    cli = subprocess.run(
        [CLI, "bench", "--trace", TRACES, "--budget-tokens", "64", "--json",
         "-q"], check=True, capture_output=True, text=True).stdout
    want = {r["method"]: r for r in map(json.loads, cli.splitlines())
            if "method" in r}
    got = kvsketch.evaluate(traces=TRACES, method=list(kvsketch.METHODS),
                            budget_tokens=[64])
    assert [r["method"] for r in got] == list(kvsketch.METHODS)
    for r in got:
        w = want[r["method"]]
        for key in ("mean_rel_err", "p50_rel_err", "p95_rel_err"):
            assert _fmt(r[key]) == w[key], (r["method"], key)
        assert round(r["retained"], 1) == w["retained"]
        for key in ("bytes_used", "budget_bytes", "positions"):
            assert r[key] == w[key], (r["method"], key)


@pytest.mark.skipif(not TRACES, reason="bundled traces absent")
def test_the_readme_example_runs(tmp_path):
    pytest.importorskip("matplotlib")
    here = os.path.dirname(os.path.abspath(__file__))
    script = os.path.join(here, "..", "examples", "error_vs_budget.py")
    trace = os.path.join(TRACES, sorted(os.listdir(TRACES))[0])
    png = tmp_path / "plot.png"
    env = dict(os.environ)
    r = subprocess.run([sys.executable, script, trace, str(png)],
                       check=True, capture_output=True, text=True, env=env)
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines()
                 if not line.startswith("wrote"))
    assert set(lines) == {"window", "h2o", "risk"}
    errs = {m: [float(x) for x in v.split()] for m, v in lines.items()}
    for m, e in errs.items():
        assert len(e) == 4 and e == sorted(e, reverse=True), m  # falls with budget
    assert png.stat().st_size > 10000
