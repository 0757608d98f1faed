"""Three methods' error against their budget on one trace, as a PNG.

    python3 error_vs_budget.py TRACE_DIR [OUT.png]

TRACE_DIR: a directory kvsketch reads (e.g. one of the bundled
../shared/data/stories260K/traces/*); your own arrays work the same way:
kvsketch.evaluate(q, k, v, ...) with, per layer, q [heads, seq, head_dim] and
k, v [kv_heads, seq, head_dim].
"""
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import kvsketch  # noqa: E402

t = kvsketch.read_trace(sys.argv[1])
out = sys.argv[2] if len(sys.argv) > 2 else "error_vs_budget.png"
methods, budgets = ["window", "h2o", "risk"], [16, 32, 64, 128]
rows = kvsketch.evaluate(t.q, t.k, t.v, scale=t.scale, rope=t.rope,
                         method=methods, budget_tokens=budgets)
for m in methods:
    err = [r["mean_rel_err"] for r in rows if r["method"] == m]
    print(m, " ".join(f"{e:.4f}" for e in err))
    plt.plot(budgets, err, marker="o", label=m)
plt.xscale("log", base=2)
plt.yscale("log")
plt.xlabel("budget (tokens per KV head)")
plt.ylabel("mean relative error")
plt.legend()
plt.savefig(out)
print("wrote", out)
