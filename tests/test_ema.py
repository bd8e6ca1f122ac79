"""EMA teacher: the update rule against a literal per-tensor reference, buffers, freezing."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from xmask.train.ema import EMATeacher


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 1, 1))


@pytest.mark.parametrize("buffers", ["copy", "ema"])
def test_update_matches_literal_rule(buffers: str) -> None:
    student = _net()
    ema = EMATeacher(student, momentum=0.9, buffers=buffers)
    teacher_before = copy.deepcopy(ema.model.state_dict())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    student.train()
    student(torch.randn(2, 3, 8, 8))  # moves BatchNorm statistics
    ema.update(student)
    after = ema.model.state_dict()
    for name, value in student.state_dict().items():
        old = teacher_before[name]
        if name.endswith("num_batches_tracked") or (buffers == "copy" and "running" in name):
            expected = value
        else:
            expected = 0.9 * old + 0.1 * value
        torch.testing.assert_close(after[name], expected, rtol=1e-6, atol=1e-6)


def test_teacher_starts_as_copy_and_is_frozen() -> None:
    student = _net()
    ema = EMATeacher(student, momentum=0.998)
    for (name, t), s in zip(
        ema.model.state_dict().items(), student.state_dict().values(), strict=True
    ):
        assert torch.equal(t, s), name
    assert not any(p.requires_grad for p in ema.model.parameters())
    assert not ema.model.training
    assert all(
        t.data_ptr() != s.data_ptr()
        for t, s in zip(ema.model.parameters(), student.parameters(), strict=True)
    )


def test_momentum_one_freezes_and_zero_copies() -> None:
    student = _net()
    frozen = EMATeacher(student, momentum=1.0)
    follower = EMATeacher(student, momentum=0.0)
    start = copy.deepcopy(frozen.model.state_dict())
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(3.0)
    frozen.update(student)
    follower.update(student)
    for name, value in student.named_parameters():
        torch.testing.assert_close(frozen.model.state_dict()[name], start[name])
        torch.testing.assert_close(follower.model.state_dict()[name], value.detach())


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="momentum"):
        EMATeacher(_net(), momentum=1.5)
    with pytest.raises(ValueError, match="buffers"):
        EMATeacher(_net(), momentum=0.5, buffers="mean")


def test_momentum_override_for_one_step() -> None:
    student = _net()
    ema = EMATeacher(student, momentum=0.998)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema.update(student, momentum=0.0)
    for name, value in student.named_parameters():
        torch.testing.assert_close(ema.model.state_dict()[name], value.detach())


def test_own_statistics_come_from_the_teachers_forward_passes() -> None:
    student = _net()
    ema = EMATeacher(student, momentum=0.9)
    assert ema.buffers == "own"
    student.train()
    student(torch.randn(4, 3, 8, 8) * 5 + 3)
    before = copy.deepcopy(dict(ema.model.named_buffers()))
    ema.update(student)
    for name, value in ema.model.named_buffers():
        assert torch.equal(value, before[name]), name
    images = torch.randn(4, 3, 8, 8) + 2
    ema.model.requires_grad_(False)
    with torch.no_grad():
        conv = ema.model[0](images)
    expected = 0.9 * before["1.running_mean"] + 0.1 * conv.mean(dim=(0, 2, 3))
    logits = ema.predict(images)
    torch.testing.assert_close(ema.model.state_dict()["1.running_mean"], expected)
    assert not ema.model.training and logits.shape[0] == 4
    ema.update(student, momentum=0.0)
    for name, value in student.named_buffers():
        torch.testing.assert_close(dict(ema.model.named_buffers())[name], value)
