"""The Mean Teacher: an exponential moving average of the student, updated every step.

The teacher starts as an exact copy of the student (the authors build it separately, with its
own random head, and never move its BatchNorm statistics). Parameters follow
``t ← m·t + (1 − m)·s`` through ``torch._foreach_lerp_`` (one fused call for all tensors);
floating-point buffers (BatchNorm running statistics) are copied from the student
(``"copy"``) or averaged the same way (``"ema"``); integer buffers (batch counters) are copied.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMATeacher:
    """Holds the teacher network and updates it from a student.

    Args:
        student: the network being trained (unwrapped, not DDP).
        momentum: ``m`` in ``t ← m·t + (1 − m)·s``.
        buffers: ``"copy"`` or ``"ema"`` for floating-point buffers.
    """

    def __init__(self, student: nn.Module, momentum: float, buffers: str = "copy") -> None:
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"EMA momentum must lie in [0, 1], got {momentum}")
        if buffers not in ("copy", "ema"):
            raise ValueError(f"teacher buffers must be 'copy' or 'ema', got {buffers!r}")
        self.model = copy.deepcopy(student).eval()
        self.model.requires_grad_(False)
        self.momentum = momentum
        self.buffers = buffers

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float | None = None) -> None:
        """One EMA step towards ``student`` (same architecture); ``momentum`` overrides the
        configured one for this step (0 copies the student)."""
        weight = 1.0 - (self.momentum if momentum is None else momentum)
        teacher_params = list(self.model.parameters())
        student_params = [p.detach() for p in student.parameters()]
        torch._foreach_lerp_(teacher_params, student_params, weight)
        floats_t, floats_s = [], []
        for t, s in zip(self.model.buffers(), student.buffers(), strict=True):
            if t.is_floating_point() and self.buffers == "ema":
                floats_t.append(t)
                floats_s.append(s.detach())
            else:
                t.copy_(s)
        if floats_t:
            torch._foreach_lerp_(floats_t, floats_s, weight)
