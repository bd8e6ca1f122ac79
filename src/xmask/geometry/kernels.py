"""Compiled CPU loops (numba) behind the post-processing of every image, each with a NumPy
twin that gives the same bits while the loops compile:

- :func:`circle_energy` (Eq. 11) and :func:`banded_middle` (the smoothing), twins here;
- the label-map loops of :mod:`xmask.geometry.label_kernels`: ``circle_table`` and
  ``lowest_cost_labels`` (twins in :mod:`xmask.geometry.raster`) and ``connected_masks``
  (twin in :mod:`xmask.geometry.labels`).

Each kernel is one pass (or two) over a ragged list of circle pixels, over rows of a table or
over the pixels of a label map. They take NumPy arrays and know nothing of the method; their
callers (:mod:`xmask.segment`, :mod:`xmask.geometry`) give them meaning, and the tests hold
each against its twin and against slow, literal references.

Floating point: ``float32`` operations in the literal order, no ``fastmath``, so a kernel
and its twin agree bit for bit.

Compilation: compiled code is cached on disk (numba ``cache=True``), but a fresh install's
first call would still compile (about 3 s for all five). :func:`warm_up` compiles (or loads
from the cache) kernel by kernel in a background thread, e.g. while the network runs; each
kernel's callers run its twin (slower, never waiting) until it is ready (:func:`ready`).
Without :func:`warm_up` they compile on first use. A process that ends during the warm-up
lets the kernel in progress finish, so that it reaches the cache, for at most
:data:`EXIT_WAIT_S` (a Ctrl-C is never held longer), and starts no other: a short process
leaves the rest to the next ones, which load the cached kernels in milliseconds.
Kernels run on one thread: on two cores under load the parallel versions were no faster and
took twice as long to compile.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable

import numpy as np
from numba import njit

from xmask.geometry import label_kernels

log = logging.getLogger(__name__)

_warm_up: threading.Thread | None = None
_warm_up_lock = threading.Lock()
_exiting = threading.Event()
_pending: set[str] = set()
"""The kernels :func:`warm_up` has yet to compile (their callers run the twins meanwhile)."""


EXIT_WAIT_S = 10.0
"""Longest a process ending during :func:`warm_up` waits for the kernel being compiled to reach
the cache (the slowest, connected_masks, compiles in about 1.5 s on a 2-core CPU); past it, the next
process compiles that kernel again."""


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
    kernel = _circle_energy_loop if ready("circle_energy") else _circle_energy_numpy
    return kernel(table, flat, owner, dist2, centres, spread2, lam)


@njit(cache=True)
def _banded_middle_loop(
    x: np.ndarray, start: np.ndarray, weight: np.ndarray, out: np.ndarray, needed: np.ndarray
) -> None:
    """Compiled :func:`banded_middle` (outputs not ``needed`` are skipped)."""
    n, channels = x.shape[1], x.shape[2]
    for a in range(out.shape[0]):
        for i in range(out.shape[1]):
            if not needed[a, i]:
                continue
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


def banded_middle(
    x: np.ndarray,
    start: np.ndarray,
    weight: np.ndarray,
    out: np.ndarray,
    needed: np.ndarray | None = None,
) -> None:
    """``out[a, i] = Σ_k weight[i, k] · x[a, start[i] + k]``, summed in ``k`` order from 0: a
    banded matrix applied along the middle axis of a 3-D table; taps past the end of that
    axis are left out.

    Args:
        x: ``A×n×C`` (float).
        start: ``I int64`` first index of each output's band.
        weight: ``I×B``, the dtype of ``x``.
        out: ``A×I×C``, written where ``needed``.
        needed: ``A×I bool``, the outputs the caller reads (None: all). Elsewhere ``out`` is
            unspecified: the compiled loop skips them, the twin computes them too.
    """
    if not ready("banded_middle"):
        _banded_middle_numpy(x, start, weight, out)
        return
    if needed is None:
        needed = np.ones(out.shape[:2], dtype=np.bool_)
    _banded_middle_loop(x, start, weight, out, np.ascontiguousarray(needed, np.bool_))


def ready(kernel: str) -> bool:
    """Whether the compiled loop of ``kernel`` runs (``circle_energy``, ``banded_middle``, or
    ``lowest_cost_labels``, ``circle_table``, ``connected_masks`` of
    :mod:`xmask.geometry.label_kernels`): False until :func:`warm_up` has compiled it, while
    its callers run the NumPy twin."""
    return kernel not in _pending


def _compile_calls() -> dict[str, Callable[[], object]]:
    """One call per kernel on tiny inputs of the types inference gives it, which compiles (or
    loads from the cache) the loop, in the order :func:`warm_up` takes them: the most time
    saved per second of compiling first."""
    table, index = np.ones((1, 1), np.float32), np.zeros(1, np.int64)
    return {
        "circle_energy": lambda: _circle_energy_loop(
            table, index, index, table[0], table, table[0], 1.0
        ),
        "banded_middle": lambda: _banded_middle_loop(
            table[None], index, table, table[None] * 0, np.ones((1, 1), np.bool_)
        ),
        "lowest_cost_labels": lambda: label_kernels.lowest_cost_labels(
            index, index, table[0], np.ones(1, bool), 1, 1
        ),
        "circle_table": lambda: label_kernels.circle_table(table.repeat(2, 1), table[0], 2, 2),
        "connected_masks": lambda: label_kernels.connected_masks(
            np.ones((2, 2), np.int32), np.zeros((1, 2), np.int64)
        ),
    }


def _compile() -> None:
    """Compile the kernels one by one, each used (and cached) as soon as it is ready; stop
    before the next one once the process is exiting."""
    for name, call in _compile_calls().items():
        if _exiting.is_set():
            return
        try:
            call()
        except Exception:  # the twins give the same results, only slower
            log.warning(
                "compiling the numba kernel %s failed; using its NumPy twin", name, exc_info=True
            )
            continue
        _pending.discard(name)
    log.debug("numba kernels ready")


def _finish_at_exit(thread: threading.Thread) -> None:
    """Let ``thread`` finish the kernel it is compiling (so it reaches the cache), at most
    :data:`EXIT_WAIT_S`, and start no other."""
    _exiting.set()
    thread.join(EXIT_WAIT_S)


def warm_up() -> None:
    """Start compiling the kernels one by one in a background thread (once per process); until
    one is ready, its callers run its NumPy twin. A process that ends first lets the kernel in
    progress reach the cache (at most :data:`EXIT_WAIT_S`) and starts no other."""
    global _warm_up
    with _warm_up_lock:
        if _warm_up is not None:
            return
        _pending.update(_compile_calls())
        _warm_up = threading.Thread(target=_compile, name="xmask-numba-warm-up", daemon=True)
        _warm_up.start()
        atexit.register(_finish_at_exit, _warm_up)
