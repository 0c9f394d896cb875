"""Nuclear norms for DSS: the part of TF-TAS's metric its public code does one SVD at a time.

`||A||_* = sum_i sigma_i(A) = sum_i sqrt(lambda_i(A^T A))`, the Gram matrix taken on the smaller
side, in float64: DSS gradients with the all-ones input are nearly rank one (sigma_2/sigma_1 ~ 1e-3,
the rest ~1e-5 and below), and in float32 the Gram's rounding noise (~1e-7 lambda_max) turns
hundreds of ~zero eigenvalues into ~3e-4 sigma_1 each (1% error measured); in float64 the relative
error against `torch.linalg.matrix_norm(ord="nuc")` is ~1e-7.

On CPU each matrix's Gram (numpy's `a.T @ a`, a symmetric rank-k update) and eigenvalues (LAPACK
dsyevr through scipy; numpy's eigvalsh without scipy) run single-threaded, and the matrices are
spread over `torch.get_num_threads()` worker threads: parallel across matrices rather than inside
each small factorisation. Measured on the shared 2-core AMD CPU for the 26 qkv/proj gradients of an
autoformer-tiny candidate (~2.7 ms a matrix on one core): ~42-55 ms, against ~55-70 ms for same-shape
matrices stacked into batched torch float64 GEMMs + one batched numpy eigvalsh (and far worse inside
the DSS loop on one thread, where torch's float64 bmm is slow), while `torch.linalg.svdvals` and
torch's (MKL) `eigvalsh` each took longer than the candidate's forward and backward. On CUDA,
same-shape matrices are stacked and solved with torch's batched `eigvalsh`.

Weights do not change between candidates scored through one supernet, so their norms are
cached per (parameter, slice); a cached value is used only while the parameter's storage,
version counter and norm are unchanged.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from vitnas.proxies._model import UsedWeight


def nuclear_norms(mats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Nuclear norms of 2-D matrices (any shapes, any float dtype), as a float64 CPU tensor."""
    for a in mats:
        if a.dim() != 2:
            raise ValueError(f"nuclear_norms: expected 2-D matrices, got shape {tuple(a.shape)}")
    oriented = [a if a.shape[0] >= a.shape[1] else a.mT for a in mats]  # [long, short]: Gram on the short side
    out = torch.empty(len(mats), dtype=torch.float64)
    cpu = [i for i, a in enumerate(oriented) if a.device.type == "cpu"]
    if cpu:
        out[cpu] = _nuclear_cpu([oriented[i] for i in cpu])
    groups: dict[tuple, list[int]] = {}
    for i, a in enumerate(oriented):
        if a.device.type != "cpu":
            groups.setdefault((tuple(a.shape), a.device), []).append(i)
    for idx in groups.values():
        stack = torch.stack([oriented[i] for i in idx]).to(torch.float64)
        out[idx] = torch.linalg.eigvalsh(stack.mT @ stack).clamp_(min=0).sqrt_().sum(-1).cpu()
    return out


def _eigvalsh_numpy(gram: np.ndarray) -> np.ndarray:
    return np.linalg.eigvalsh(gram)


def _eigvalsh_lapack():
    """LAPACK dsyevr (eigenvalues only) through scipy: ~15% faster than numpy's dsyevd here."""
    try:
        from scipy.linalg.lapack import dsyevr
    except ImportError:  # scipy comes with scikit-learn; numpy's solver otherwise
        return _eigvalsh_numpy

    def eig(gram: np.ndarray) -> np.ndarray:
        w, _, m, _, info = dsyevr(gram, compute_v=0)
        return w[:m] if info == 0 else np.linalg.eigvalsh(gram)

    return eig


_EIGVALSH = None


def _nuclear_one(a: np.ndarray) -> float:
    a = a.astype(np.float64)
    gram = a.T @ a  # numpy computes a.T @ a with a symmetric rank-k update (half a GEMM)
    return float(np.sqrt(np.clip(_EIGVALSH(gram), 0.0, None)).sum())


_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (workers, pool)


def _nuclear_cpu(mats: list[torch.Tensor]) -> torch.Tensor:
    """Per matrix: float64 Gram + eigenvalues in numpy's LAPACK, single-threaded, spread over
    `torch.get_num_threads()` worker threads (numpy releases the GIL): parallel over matrices
    instead of inside each small factorisation."""
    global _POOL
    # float32/float64 views go to numpy as they are; the cast to float64 happens in the workers
    arrays = [(a.detach() if a.dtype in (torch.float32, torch.float64) else a.detach().double()).numpy()
              for a in mats]
    workers = min(torch.get_num_threads(), len(arrays))
    with _one_blas_thread():
        if workers <= 1:
            values = [_nuclear_one(a) for a in arrays]
        else:
            if _POOL is None or _POOL[0] < workers:
                _POOL = (workers, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vitnas-nuc"))
            values = list(_POOL[1].map(_nuclear_one, arrays))
    return torch.tensor(values, dtype=torch.float64)


_CONTROLLER = None


def _one_blas_thread():
    """numpy's OpenBLAS on one thread: these problems are too small to gain from more, and its idle
    threads spin after each call, taking the cores from torch's next forward/backward (measured:
    several-fold slowdowns on a busy 2-core machine). A no-op without threadpoolctl."""
    global _CONTROLLER, _EIGVALSH
    if _EIGVALSH is None:  # import scipy's LAPACK first, so the controller sees its OpenBLAS too
        _EIGVALSH = _eigvalsh_lapack()
    if _CONTROLLER is None:
        try:
            from threadpoolctl import ThreadpoolController

            _CONTROLLER = ThreadpoolController()
        except Exception:  # threadpoolctl missing or unable to inspect the loaded libraries
            _CONTROLLER = False
    return _CONTROLLER.limit(limits=1, user_api="blas") if _CONTROLLER else contextlib.nullcontext()


# id(param) -> (weak reference to the param, {slice key: (stamp, value)}). Not a WeakKeyDictionary:
# that compares keys with `==`, which for tensors is elementwise.
_CACHE: dict[int, tuple[weakref.ref, dict]] = {}


def _entries(p: torch.Tensor) -> dict:
    slot = _CACHE.get(id(p))
    if slot is None or slot[0]() is not p:
        key = id(p)
        slot = _CACHE[key] = (weakref.ref(p, lambda _, key=key: _CACHE.pop(key, None)), {})
    return slot[1]


def _stamp(p: torch.Tensor) -> tuple:
    """Changes whenever the parameter's values do: in-place ops bump `_version`, `.data = ...`
    changes the storage, and writes through `.data` (which bypass the version counter) change its norm."""
    return (p.data_ptr(), p._version, p.dtype, float(torch.linalg.vector_norm(p.detach())))


def weight_nuclear_norms(weights: Sequence[UsedWeight]) -> torch.Tensor:
    """`nuclear_norms` of the used weight matrices, from the cache where still valid."""
    out = torch.empty(len(weights), dtype=torch.float64)
    stamps, missing = [], []
    by_param: dict[int, tuple] = {}
    for i, w in enumerate(weights):
        stamp = by_param.get(id(w.param))
        if stamp is None:
            stamp = by_param[id(w.param)] = _stamp(w.param)
        stamps.append(stamp)
        hit = _entries(w.param).get(w.key)
        if hit is not None and hit[0] == stamp:
            out[i] = hit[1]
        else:
            missing.append(i)
    if missing:
        values = nuclear_norms([weights[i].matrix() for i in missing])
        for i, v in zip(missing, values.tolist(), strict=True):
            out[i] = v
            _entries(weights[i].param)[weights[i].key] = (stamps[i], v)
    return out


def clear_cache() -> None:
    """Forget every cached weight norm (they are also dropped with their parameters)."""
    _CACHE.clear()
