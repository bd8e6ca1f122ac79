"""Compiled CPU loops (numba) behind the segmentation energy and the smoothing, each with a
NumPy twin that gives the same bits while the loops compile.

Each kernel is one pass over a ragged list of circle pixels or over rows of a table, with
no temporary of that list's size. They take NumPy arrays and know nothing of the method;
their callers (:mod:`xmask.segment`) give them meaning and are tested against slow, literal
references. The other loops of the geometry are vectorised NumPy
(:mod:`xmask.geometry.raster`), as fast without compiling.

Floating point: ``float32`` operations in the literal order, no ``fastmath``, so a kernel
and its twin agree bit for bit.

Compilation: compiled code is cached on disk (numba ``cache=True``), but a fresh install's
first call would still compile (seconds). :func:`warm_up` compiles (or loads from the cache)
in a background thread, e.g. while the network runs; until it is done :func:`circle_energy`
and :func:`banded_middle` run the twins (slower, never waiting), then the compiled loops.
Without :func:`warm_up` they compile on first use. A process that ends while they compile
waits at most :data:`EXIT_WAIT_S` for them to reach the cache (a Ctrl-C is never held longer).
Kernels run on one thread: on two cores under load the parallel versions were no faster and
took twice as long to compile.
"""

from __future__ import annotations

import atexit
import logging
import threading

import numpy as np
from numba import njit

log = logging.getLogger(__name__)

_warm_up: threading.Thread | None = None
_warm_up_lock = threading.Lock()
_compiled = True
"""False from :func:`warm_up` until its thread has compiled the kernels."""


EXIT_WAIT_S = 10.0
"""Longest a process ending during :func:`warm_up` waits for the compiled code to reach the
cache (an idle 2-core CPU compiles in about 2 s); past it, the next process compiles again."""


@njit(cache=True)
def _circle_energy_loop(
    table: np.ndarray,
    flat: np.ndarray,
    owner: np.ndarray,
    dist2: np.ndarray,
    centres: np.ndarray,
    spread2: np.ndarray,
    lam: float,
) -> np.ndarray:
    """Compiled :func:`circle_energy`."""
    out = np.empty(flat.shape[0], np.float32)
    d = table.shape[1]
    lam32 = np.float32(lam)
    for j in range(flat.shape[0]):
        row, i = flat[j], owner[j]
        acc = np.float32(0.0)
        for k in range(d):
            diff = table[row, k] - centres[i, k]
            acc += diff * diff
        out[j] = np.sqrt(acc) + lam32 * dist2[j] / spread2[i]
    return out


def _circle_energy_numpy(
    table: np.ndarray,
    flat: np.ndarray,
    owner: np.ndarray,
    dist2: np.ndarray,
    centres: np.ndarray,
    spread2: np.ndarray,
    lam: float,
    chunk: int = 1 << 15,
) -> np.ndarray:
    """NumPy twin of :func:`_circle_energy_loop` (the same sums in the same order), over
    chunks of ``chunk`` entries."""
    out = np.empty(flat.shape[0], np.float32)
    lam32 = np.float32(lam)
    for first in range(0, flat.shape[0], chunk):
        part = slice(first, first + chunk)
        rows, heads = flat[part], owner[part]
        diff = (table[rows] - centres[heads]).T
        square = diff * diff
        acc = np.zeros(len(rows), np.float32)
        for k in range(square.shape[0]):
            acc += square[k]
        out[part] = np.sqrt(acc) + lam32 * dist2[part] / spread2[heads]
    return out


def circle_energy(
    table: np.ndarray,
    flat: np.ndarray,
    owner: np.ndarray,
    dist2: np.ndarray,
    centres: np.ndarray,
    spread2: np.ndarray,
    lam: float,
) -> np.ndarray:
    """``P float32``: ``||table[flat[j]] − centres[owner[j]]|| + lam·dist2[j] / spread2[owner[j]]``
    (Eq. 11 with ``spread2 = (r + ε)²``), the squared norm summed in channel order.

    Args:
        table: ``(H·W)×D float32`` pixel-major embedding.
        flat, owner: ``P int64`` the circle pixels (CSR entries) and their heads.
        dist2: ``P float32`` squared distance of each entry to its head.
        centres: ``N×D float32``.
        spread2: ``N float32`` squared spread of each owner.
        lam: weight of the normalised squared distance.
    """
    kernel = _circle_energy_loop if _compiled else _circle_energy_numpy
    return kernel(table, flat, owner, dist2, centres, spread2, lam)


@njit(cache=True)
def _banded_middle_loop(
    x: np.ndarray, start: np.ndarray, weight: np.ndarray, out: np.ndarray
) -> None:
    """Compiled :func:`banded_middle`."""
    n, channels = x.shape[1], x.shape[2]
    for a in range(out.shape[0]):
        for i in range(out.shape[1]):
            for c in range(channels):
                out[a, i, c] = 0.0
            for k in range(weight.shape[1]):
                row = start[i] + k
                if row >= n:
                    break
                w = weight[i, k]
                for c in range(channels):
                    out[a, i, c] += w * x[a, row, c]


def _banded_middle_numpy(
    x: np.ndarray, start: np.ndarray, weight: np.ndarray, out: np.ndarray, chunk: int = 1 << 18
) -> None:
    """NumPy twin of :func:`_banded_middle_loop` (tap by tap, from zero), over blocks of
    about ``chunk`` output values."""
    taps = []
    for k in range(weight.shape[1]):
        rows = np.flatnonzero(start + k < x.shape[1])
        every = len(rows) == len(start)
        taps.append((None if every else rows, start[rows] + k, weight[rows, k][:, None]))
    step = max(1, chunk // max(1, out.shape[1] * out.shape[2]))
    out[...] = 0
    for first in range(0, out.shape[0], step):
        block, target = x[first : first + step], out[first : first + step]
        for rows, source, w in taps:
            if rows is None:
                target += block[:, source] * w
            else:
                target[:, rows] += block[:, source] * w


def banded_middle(x: np.ndarray, start: np.ndarray, weight: np.ndarray, out: np.ndarray) -> None:
    """``out[a, i] = Σ_k weight[i, k] · x[a, start[i] + k]``, summed in ``k`` order from 0: a
    banded matrix applied along the middle axis of a 3-D table; taps past the end of that
    axis are left out.

    Args:
        x: ``A×n×C`` (float).
        start: ``I int64`` first index of each output's band.
        weight: ``I×B``, the dtype of ``x``.
        out: ``A×I×C``, written.
    """
    (_banded_middle_loop if _compiled else _banded_middle_numpy)(x, start, weight, out)


def _compile() -> None:
    """Compile (or load from the cache) the kernels for the ``float32`` inputs of inference,
    then switch :func:`circle_energy` and :func:`banded_middle` to them."""
    global _compiled
    try:
        table, index = np.ones((1, 1), np.float32), np.zeros(1, np.int64)
        _circle_energy_loop(table, index, index, table[0], table, table[0], 1.0)
        _banded_middle_loop(table[None], index, table, table[None].copy())
    except Exception:  # the twins give the same results, only slower
        log.warning("compiling the numba kernels failed; using their NumPy versions", exc_info=True)
        return
    _compiled = True
    log.debug("numba kernels ready")


def warm_up() -> None:
    """Start compiling the kernels in a background thread (once per process); until it is
    done, the kernels run their NumPy twins. A process that ends first waits for it up to
    :data:`EXIT_WAIT_S`, so that the compiled code reaches the cache for the next one."""
    global _warm_up, _compiled
    with _warm_up_lock:
        if _warm_up is not None:
            return
        _compiled = False
        _warm_up = threading.Thread(target=_compile, name="xmask-numba-warm-up", daemon=True)
        _warm_up.start()
        atexit.register(_warm_up.join, EXIT_WAIT_S)
