"""``xmask predict`` over several processes (``torchrun``): each rank predicts its share of the
sources into the same output folder and rank 0 writes the one summary of the folder.

``torchrun --nproc_per_node N -m xmask predict SOURCES --out OUT`` (or ``--nnodes`` machines
sharing ``OUT`` on one file system) sets ``RANK`` and ``WORLD_SIZE``. Sources are dealt to the
ranks by output name, so two files that would write the same name always meet in one process
and are told apart exactly as in a single process (:func:`xmask.apps.batch.claim`). Every
image is still kept or redone by its own fingerprint, so a sharded run resumes like any other,
with the same or another number of ranks. The ranks exchange only their summaries (a gloo
group, also on GPU machines); each rank runs its network on its own device (``LOCAL_RANK``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch.distributed as dist

from xmask.apps.batch import BatchSummary
from xmask.apps.sources import Source
from xmask.device import DistInfo

log = logging.getLogger(__name__)

PER_CALL = ("predicted", "videos_predicted", "already_done", "redone", "network_s", "post_s")
"""The :class:`~xmask.apps.batch.BatchSummary` counts of one call, summed over the ranks (with
``skipped`` and ``streams``, joined; ``seconds``, the wall time, is the longest rank's); the
folder's totals are counted by rank 0 from the folder."""


def shard_sources(sources: Sequence[Source], info: DistInfo) -> list[Source]:
    """This rank's sources: the output names in first-seen order, dealt round-robin, each with
    every source of that name (in their order)."""
    if not info.enabled:
        return list(sources)
    names: dict[str, int] = {}
    for source in sources:
        names.setdefault(source.stem, len(names))
    mine = [s for s in sources if names[s.stem] % info.world_size == info.rank]
    log.info("rank %d of %d: %d of %d sources", info.rank, info.world_size, len(mine), len(sources))
    return mine


def merge_summaries(parts: Sequence[BatchSummary]) -> BatchSummary:
    """One summary of a call from the ranks' (the first rank's model, count rule and backend)."""
    merged = BatchSummary(parts[0].model, parts[0].count_rule, parts[0].backend)
    for part in parts:
        for name in PER_CALL:
            setattr(merged, name, getattr(merged, name) + getattr(part, name))
        merged.seconds = max(merged.seconds, part.seconds)  # the ranks ran side by side
        merged.skipped.extend(part.skipped)
        merged.streams.extend(part.streams)
    return merged


def gather_summaries(summary: BatchSummary, info: DistInfo) -> BatchSummary | None:
    """Rank 0: the merged summary of every rank (it waits for all of them); other ranks: None.
    A single process gets its own summary back."""
    if not info.enabled:
        return summary
    parts: list[BatchSummary] | None = [summary] * info.world_size if info.is_main else None
    dist.gather_object(summary, parts, dst=0)
    return merge_summaries(parts) if parts is not None else None
