"""kvsketch: a transformer's attention KV cache in a fixed memory budget.

Arrays are numpy float32 (float16 is accepted and converted), C-contiguous,
in the per-layer layout of Hugging Face caches without the batch axis:
keys and values ``[kv_heads, seq, head_dim]``, queries ``[heads, seq,
head_dim]``. Three lines to try a method on your own dump::

    import kvsketch
    rows = kvsketch.evaluate(q, k, v, method=["window", "risk"], budget_tokens=[64, 128])
    print(rows[0]["mean_rel_err"])

Errors: ``ValueError`` for arrays of the wrong shape or dtype,
``IndexError`` for a layer out of range, ``kvsketch.Error`` (a
``RuntimeError``) with the library's message for everything the library
refuses (``kvsketch.BudgetError`` for memory, ``kvsketch.StateError`` for
saved states). Compute releases the GIL.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Union

import numpy as np

from . import _kvsketch
from ._kvsketch import BudgetError, Error, StateError, __version__

__all__ = [
    "Session",
    "Trace",
    "evaluate",
    "read_trace",
    "read_traces",
    "write_trace",
    "Error",
    "BudgetError",
    "StateError",
    "METHODS",
    "STORAGES",
    "__version__",
]

METHODS = ("exact", "window", "uniform", "balance", "taylor", "hashed", "h2o",
           "tova", "risk", "blurry")
STORAGES = ("f32", "f16", "bf16", "q8", "q4", "q4a")


class Session(_kvsketch._Session):
    """A KV cache in a fixed budget (``kvsketch::Session``).

    Give exactly one budget: ``budget_tokens`` (per KV head: the bytes of
    that many f32 tokens), ``budget_bytes`` (total, including the per-thread
    scratch) or ``budget_bytes_per_head``. ``threads=0`` uses the machine's
    performance cores; results are identical for any thread count.

    Methods: ``append(layer, k, v)``, ``prefill(layer, q, k, v) -> out``,
    ``attend(layer, q, learn=True) -> out``, ``truncate(p)``,
    ``min_truncate_position()``, ``position(layer)``, ``reset()``,
    ``fork()``, ``stats()``, ``save_bytes()``, ``load_bytes(b)``.
    """

    def __init__(self, *, heads: int, head_dim: int, layers: int = 1,
                 kv_heads: Optional[int] = None, method: str = "risk",
                 budget_tokens: Optional[int] = None,
                 budget_bytes: Optional[int] = None,
                 budget_bytes_per_head: Optional[int] = None,
                 storage: str = "f16", storage_k: Optional[str] = None,
                 storage_v: Optional[str] = None, rotate: bool = True,
                 threads: int = 0, rope_theta: float = 0.0,
                 rope_interleaved: bool = True, scale: Optional[float] = None,
                 seed: int = 0, sinks: int = 4) -> None:
        given = [b is not None for b in
                 (budget_tokens, budget_bytes, budget_bytes_per_head)]
        if sum(given) != 1:
            raise ValueError("give exactly one of budget_tokens, budget_bytes "
                             "and budget_bytes_per_head")
        super().__init__(
            layers=layers, heads=heads,
            kv_heads=heads if kv_heads is None else kv_heads,
            head_dim=head_dim, method=method,
            budget_tokens=budget_tokens or 0, budget_bytes=budget_bytes or 0,
            budget_bytes_per_head=budget_bytes_per_head or 0,
            storage=storage, storage_k=storage_k or "",
            storage_v=storage_v or "", rotate=rotate, threads=threads,
            rope_theta=rope_theta, rope_interleaved=rope_interleaved,
            scale=0.0 if scale is None else scale, seed=seed, sinks=sinks)


@dataclass
class Trace:
    """Attention of one sequence: per layer, q ``[heads, seq, head_dim]``,
    k and v ``[kv_heads, seq, head_dim]`` (float32); ``scale`` of the scores
    (None: 1/sqrt(head_dim)); ``rope`` as in trace.json (``theta``,
    ``layout`` "interleaved" or "half", ``dims``, ``first_position``) when
    the keys carry RoPE."""
    q: List[np.ndarray]
    k: List[np.ndarray]
    v: List[np.ndarray]
    scale: Optional[float] = None
    rope: Optional[dict] = None
    name: str = ""

    @property
    def layers(self) -> int:
        return len(self.q)

    def _dict(self) -> dict:
        return {"q": list(self.q), "k": list(self.k), "v": list(self.v),
                "scale": self.scale, "rope": self.rope, "name": self.name}


def _per_layer(x) -> list:
    if isinstance(x, np.ndarray):
        return [x]
    return list(x)


def read_trace(path: str) -> Trace:
    """One trace directory (L{l}_q.npy, L{l}_k.npy, L{l}_v.npy, trace.json),
    validated as ``kvsketch bench --trace`` validates it."""
    d = _kvsketch.read_trace(os.fspath(path))
    return Trace(q=d["q"], k=d["k"], v=d["v"], scale=d["scale"],
                 rope=d["rope"], name=d["name"])


def read_traces(path: str) -> List[Trace]:
    """A trace directory, or every trace directory inside a folder (sorted),
    as ``kvsketch bench --trace PATH`` reads them."""
    return [read_trace(p) for p in _kvsketch.trace_dirs(os.fspath(path))]


def write_trace(path: str, q, k, v, scale: Optional[float] = None,
                rope: Optional[dict] = None) -> None:
    """Writes a trace directory ``kvsketch bench --trace`` reads. q, k, v:
    one array per layer (or one array for a single layer)."""
    q, k, v = _per_layer(q), _per_layer(k), _per_layer(v)
    if not (len(q) == len(k) == len(v) >= 1):
        raise ValueError("q, k and v need one array per layer, as many each")
    os.makedirs(path, exist_ok=True)
    for name, arrays in (("q", q), ("k", k), ("v", v)):
        for layer, a in enumerate(arrays):
            a = np.asarray(a)
            if a.ndim != 3:
                raise ValueError(f"{name}[{layer}]: shape {a.shape}, expected "
                                 "[heads, seq, head_dim]")
            np.save(os.path.join(path, f"L{layer}_{name}.npy"),
                    np.ascontiguousarray(a, dtype=np.float32))
    head_dim = np.asarray(q[0]).shape[2]
    meta = {"scale": float(scale) if scale is not None
            else 1.0 / float(np.sqrt(head_dim)),
            "causal": True, "n_layers": len(q)}
    if rope is not None:
        meta["rope"] = dict(rope)
    with open(os.path.join(path, "trace.json"), "w") as f:
        json.dump(meta, f, indent=1)


def evaluate(q=None, k=None, v=None, *, traces=None,
             method: Union[str, Sequence[str]] = "risk",
             budget_tokens: Union[int, Sequence[int]] = (32, 64, 128),
             budget_bytes: int = 0, scale: Optional[float] = None,
             rope: Optional[dict] = None, storage: str = "f16",
             storage_k: Optional[str] = None, storage_v: Optional[str] = None,
             rotate: bool = True, seed: int = 0, sinks: int = 4,
             eval_max: int = 512, threads: int = 0):
    """The error statistics of ``kvsketch bench --trace`` on your arrays.

    Either q, k, v (one trace: arrays per layer, or one array for one layer;
    ``scale`` and ``rope`` describe it) or ``traces`` (a Trace, a list of
    them, or a path read as ``read_traces``). Each method runs token by
    token over every KV head; at up to ``eval_max`` positions per head after
    the budget its outputs are compared with exact attention (relative L2
    error per query head). ``budget_tokens`` are per KV head (the bytes of
    that many f32 tokens); ``budget_bytes`` (per KV head, as ``bench
    --budget``) replaces them when non-zero. Returns one dict per (budget, method), in order:
    method, budget_tokens, budget_bytes, bytes_used, retained,
    mean_rel_err, p50_rel_err, p95_rel_err, append_ns_per_token,
    attend_ns_per_query, positions, error (None, or why the method failed).
    A single method and budget return that dict alone.
    """
    if traces is None:
        if q is None or k is None or v is None:
            raise ValueError("give q, k and v, or traces")
        items = [Trace(q=_per_layer(q), k=_per_layer(k), v=_per_layer(v),
                       scale=scale, rope=rope)]
    elif isinstance(traces, (str, os.PathLike)):
        items = read_traces(traces)
    elif isinstance(traces, Trace):
        items = [traces]
    else:
        items = list(traces)
    methods = [method] if isinstance(method, str) else list(method)
    budgets = ([budget_tokens] if isinstance(budget_tokens, (int, np.integer))
               else list(budget_tokens))
    if budget_bytes:
        budgets = [0]
    rows = _kvsketch.evaluate(
        [t._dict() for t in items], methods, [int(b) for b in budgets],
        int(budget_bytes), storage, storage_k or "", storage_v or "", rotate,
        seed, sinks, eval_max, threads)
    if isinstance(method, str) and len(budgets) == 1:
        return rows[0]
    return rows
