"""Items through a chain of stages, each stage in its own thread, so that reading the next image,
the network on this one and the post-processing of the one before overlap (throughput mode of
folders and videos).

:func:`run_stages` passes every item through the stage functions in order and yields each
item's result in the items' order. Stages are connected by queues of ``depth`` items, so at most
about ``depth + 1`` items wait between two stages (memory stays bounded). PyTorch, the numba
kernels of the segmentation, Pillow's decoders and encoders and large NumPy operations release
the GIL, so the stages do run at the same time.

A stage that raises on an item does not stop the others: its result is a :class:`Failed`
holding the exception, which the later stages pass on, and the caller decides what to do with
it (report and skip, or raise). A stage may also settle an item early with :class:`Settled`
(e.g. an image already done), which the later stages pass on too. With ``threads=False`` the
same stages run one item after another in the calling thread: the same results, the same
order, one code path.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

DEPTH = 2
"""Items each queue between two stages holds."""

POLL_S = 0.1
"""How often a blocked stage thread looks whether the run was stopped."""

Stage = Callable[[Any], Any]
"""One stage: the previous stage's result (the item itself for the first) → this stage's."""


@dataclass(frozen=True)
class Settled:
    """An item's result known before the last stage; the later stages pass it on as it is.

    Attributes:
        value: the result.
    """

    value: Any = None


@dataclass(frozen=True)
class Failed(Settled):
    """A stage raised on the item (``value``: the exception); the later stages pass it on."""

    value: Exception | None = None


def _apply(stage: Stage, value: Any) -> Any:
    """One stage on one value: a settled value passes, an exception becomes :class:`Failed`."""
    if isinstance(value, Settled):
        return value
    try:
        return stage(value)
    except Exception as err:  # carried to the caller in the item's place
        return Failed(err)


_END = object()
"""Put after the last item."""


class _StoppedError(Exception):
    """The run was stopped while a stage thread waited."""


def run_stages(
    items: Iterable[Any],
    stages: Sequence[Stage],
    *,
    threads: bool = True,
    depth: int = DEPTH,
) -> Generator[tuple[Any, Any], None, None]:
    """Every item through every stage (module docstring).

    Args:
        items: the inputs, read by the first stage's thread (iterating them may do work too,
            such as decoding a video's next frame).
        stages: the stage functions, in order.
        threads: one thread per stage; False: everything in the calling thread.
        depth: items each queue between two stages holds.

    Yields:
        ``(item, result)`` in the items' order; ``result`` is the last stage's return value, or
        the :class:`Settled` (or :class:`Failed`) of an earlier stage. An exception raised while
        iterating ``items`` is raised here, after the results of the items before it.
        Closing the iterator early stops the threads; it returns once each has finished the
        item in hand, and ``items`` has given its next item or ended (an iterator that may wait
        long for one should end on a signal of its own, set before closing).
    """
    if not threads:
        for item in items:
            value = item
            for stage in stages:
                value = _apply(stage, value)
            yield item, value
        return
    stop = threading.Event()
    queues = [queue.Queue[Any](maxsize=depth) for _ in stages]

    def put(target: queue.Queue[Any], entry: Any) -> None:
        while not stop.is_set():
            try:
                target.put(entry, timeout=POLL_S)
                return
            except queue.Full:
                continue
        raise _StoppedError

    def get(source: queue.Queue[Any]) -> Any:
        while not stop.is_set():
            try:
                return source.get(timeout=POLL_S)
            except queue.Empty:
                continue
        raise _StoppedError

    def put_quietly(target: queue.Queue[Any], entry: Any) -> None:
        try:
            put(target, entry)
        except _StoppedError:
            return

    def first() -> None:
        try:
            for item in items:
                put(queues[0], (item, _apply(stages[0], item)))
            put(queues[0], _END)
        except _StoppedError:
            return
        except BaseException as err:  # the items' own iteration failed: raised in the caller
            put_quietly(queues[0], err)

    def later(index: int) -> None:
        try:
            entry = get(queues[index - 1])
            while entry is not _END and not isinstance(entry, BaseException):
                item, value = entry
                put(queues[index], (item, _apply(stages[index], value)))
                entry = get(queues[index - 1])
            put(queues[index], entry)
        except _StoppedError:
            return
        except BaseException as err:  # not a stage's error (those are carried): raised too
            put_quietly(queues[index], err)

    workers = [threading.Thread(target=first, name="xmask-stage-0", daemon=True)]
    workers += [
        threading.Thread(target=later, args=(i,), name=f"xmask-stage-{i}", daemon=True)
        for i in range(1, len(stages))
    ]
    for worker in workers:
        worker.start()
    try:
        while (entry := queues[-1].get()) is not _END:
            if isinstance(entry, BaseException):
                raise entry
            yield entry
    finally:
        stop.set()
        for worker in workers:
            worker.join()
