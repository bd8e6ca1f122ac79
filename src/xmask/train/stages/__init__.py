"""The training stages, in order: each a :class:`~xmask.train.stages.base.Stage`.

1. :class:`~xmask.train.stages.p2r.MeanTeacherStep`: the P2R counter with Mean Teacher.
2. :class:`~xmask.train.stages.mask.MaskStep`: the XMask mask head (discriminative loss).
3. :class:`~xmask.train.stages.constraint.ConstraintStep`: mask-constrained counting.
4. :class:`~xmask.train.stages.offset.OffsetStep`: the offset head (where each head lies).
"""

from __future__ import annotations

from xmask.errors import XmaskError
from xmask.train.stages.base import Stage
from xmask.train.stages.constraint import ConstraintStep
from xmask.train.stages.mask import MaskStep
from xmask.train.stages.offset import OffsetStep
from xmask.train.stages.p2r import MeanTeacherStep

STAGES: tuple[type[Stage], ...] = (MeanTeacherStep, MaskStep, ConstraintStep, OffsetStep)
"""Every stage, in the order a pipeline runs them; ``STAGES[k - 1].number == k``."""


def stage_class(number: int) -> type[Stage]:
    """The stage a config's ``stage`` names.

    Raises:
        XmaskError: no such stage.
    """
    for stage in STAGES:
        if stage.number == number:
            return stage
    raise XmaskError(f"stage must be one of {[s.number for s in STAGES]}, got {number}")
