from typing import Dict, List, Optional, Sequence, Union

import numpy as np

__version__: str
METHODS: tuple
STORAGES: tuple

class Error(RuntimeError): ...
class BudgetError(Error): ...
class StateError(Error): ...

class Session:
    def __init__(self, *, heads: int, head_dim: int, layers: int = ...,
                 kv_heads: Optional[int] = ..., method: str = ...,
                 budget_tokens: Optional[int] = ...,
                 budget_bytes: Optional[int] = ...,
                 budget_bytes_per_head: Optional[int] = ...,
                 storage: str = ..., storage_k: Optional[str] = ...,
                 storage_v: Optional[str] = ..., rotate: bool = ...,
                 threads: int = ..., rope_theta: float = ...,
                 rope_interleaved: bool = ..., scale: Optional[float] = ...,
                 seed: int = ..., sinks: int = ...) -> None: ...
    def append(self, layer: int, k: np.ndarray, v: np.ndarray) -> None:
        """k, v: [kv_heads, n, head_dim] (or [kv_heads, head_dim])."""
    def prefill(self, layer: int, q: np.ndarray, k: np.ndarray,
                v: np.ndarray) -> np.ndarray:
        """q [heads, n, d], k/v [kv_heads, n, d] -> out [heads, n, d]: causal
        attention to the state and the block, then the block is appended."""
    def attend(self, layer: int, q: np.ndarray,
               learn: bool = ...) -> np.ndarray:
        """q [heads, head_dim] (or [heads, 1, head_dim]) -> out, same shape.
        learn=False: no query statistic changes."""
    def truncate(self, p: int) -> None: ...
    def min_truncate_position(self) -> int: ...
    def position(self, layer: int) -> int: ...
    def reset(self) -> None: ...
    def fork(self) -> "Session":
        """An independent copy (configuration and state). Its class is the
        extension's base class, with every method above."""
    def stats(self) -> Dict[str, object]: ...
    def save_bytes(self) -> bytes: ...
    def load_bytes(self, state: bytes) -> None: ...

class Trace:
    q: List[np.ndarray]
    k: List[np.ndarray]
    v: List[np.ndarray]
    scale: Optional[float]
    rope: Optional[dict]
    name: str
    def __init__(self, q: List[np.ndarray], k: List[np.ndarray],
                 v: List[np.ndarray], scale: Optional[float] = ...,
                 rope: Optional[dict] = ..., name: str = ...) -> None: ...
    @property
    def layers(self) -> int: ...

def read_trace(path: str) -> Trace: ...
def read_traces(path: str) -> List[Trace]: ...
def write_trace(path: str, q, k, v, scale: Optional[float] = ...,
                rope: Optional[dict] = ...) -> None: ...
def evaluate(q: Optional[Union[np.ndarray, Sequence[np.ndarray]]] = ...,
             k: Optional[Union[np.ndarray, Sequence[np.ndarray]]] = ...,
             v: Optional[Union[np.ndarray, Sequence[np.ndarray]]] = ..., *,
             traces: Optional[Union[str, Trace, Sequence[Trace]]] = ...,
             method: Union[str, Sequence[str]] = ...,
             budget_tokens: Union[int, Sequence[int]] = ...,
             budget_bytes: int = ..., scale: Optional[float] = ...,
             rope: Optional[dict] = ..., storage: str = ...,
             storage_k: Optional[str] = ..., storage_v: Optional[str] = ...,
             rotate: bool = ..., seed: int = ..., sinks: int = ...,
             eval_max: int = ..., threads: int = ...
             ) -> Union[Dict[str, object], List[Dict[str, object]]]: ...
