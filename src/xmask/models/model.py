"""The assembled network: backbone → neck → count head (and the mask head from Stage 2 on).

``XMaskModel`` takes RGB images in ``[0, 1]`` and returns :class:`xmask.types.ModelOutput`
whose logits lie on the stride-4 grid of :mod:`xmask.geometry`: cell ``(i, j)`` covers input
pixels ``[4i, 4i+4) × [4j, 4j+4)`` and stands for the head point at its centre.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as nnf

from xmask.models.backbones import build_backbone, ceil_div
from xmask.models.count_head import COUNT_STRIDE, CountHead
from xmask.models.mask_head import EMBED_DIM, MaskHead
from xmask.models.neck import Neck
from xmask.models.offset_head import OffsetHead
from xmask.types import ModelOutput

PAD_MULTIPLE = 16
"""Inputs are padded to a multiple of this (the backbone's coarsest stride)."""


@dataclass
class ModelConfig:
    """Network architecture (a plain dataclass, so OmegaConf can structure it).

    Attributes:
        backbone: a name from :func:`xmask.models.backbones.list_backbones`.
        weights: backbone weights: ``"imagenet"``, a path to a local state-dict file, or
            None (random initialisation); see :mod:`xmask.models.backbones`.
        neck_channels: channels of the fused stride-8 map (authors: 256).
        head_channels: hidden channels of the count head (authors: 256).
        channels_last: run the convolutions on channels-last activations (parameters keep
            their default layout, so checkpoints are unaffected); about 1.3× faster for
            EfficientNet-Lite0 on a CPU, same results up to float rounding.
        mask_head: build the mask head (Stage 2 and later; :meth:`XMaskModel.add_mask_head`
            adds it to a Stage-1 model).
        mask_channels: hidden channels of the mask head.
        embed_dim: ``D``, the embedding channels (paper: 16).
        offset_head: build the offset head (:mod:`xmask.models.offset_head`; the
            localisation stage adds it with :meth:`XMaskModel.add_offset_head`).
        offset_channels: hidden channels of the offset head.
    """

    backbone: str = "efficientnet_lite0"
    weights: str | None = "imagenet"
    neck_channels: int = 256
    head_channels: int = 256
    channels_last: bool = True
    mask_head: bool = False
    mask_channels: int = 128
    embed_dim: int = EMBED_DIM
    offset_head: bool = False
    offset_channels: int = 64


class XMaskModel(nn.Module):
    """Backbone, neck, count head and (from Stage 2 on) mask head.

    Submodules (what a trainer freezes or trains by name): ``backbone``, ``neck``,
    ``count_head``, ``mask_head`` (None without one; it maps the neck's ``B×C×h8×w8`` map
    to a ``B×D×2h8×2w8`` embedding on the same stride-4 grid as the logits) and
    ``offset_head`` (None without one; ``B×2×2h8×2w8`` offsets on that grid).

    The input is normalised with the backbone's mean/std inside ``forward`` and zero-padded
    at the bottom and right (after normalisation, i.e. with the mean colour) to a multiple
    of 16; the stride-4 outputs are cropped back to ``ceil(H/4) × ceil(W/4)`` and returned
    contiguous.

    Args:
        cfg: the architecture.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone, weights=cfg.weights)
        self.neck = Neck(self.backbone.channels, cfg.neck_channels)
        self.count_head = CountHead(cfg.neck_channels, cfg.head_channels)
        self.mask_head: MaskHead | None = None
        self.offset_head: OffsetHead | None = None
        self.register_buffer(
            "mean", torch.tensor(self.backbone.mean).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(self.backbone.std).view(1, 3, 1, 1), persistent=False
        )
        if cfg.mask_head:
            self.add_mask_head()
        if cfg.offset_head:
            self.add_offset_head()

    def forward(self, images: Tensor, with_embedding: bool = True) -> ModelOutput:
        """``B×3×H×W`` float RGB in ``[0, 1]`` → :class:`~xmask.types.ModelOutput` with
        ``B×1×ceil(H/4)×ceil(W/4)`` logits (and the embedding when a mask head is set and
        ``with_embedding``; Stage 3 skips it)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be B×3×H×W, got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        x = nnf.pad(x, (0, _pad_to(width), 0, _pad_to(height)))
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        fused = self.neck(self.backbone(x))
        h, w = ceil_div(height, COUNT_STRIDE), ceil_div(width, COUNT_STRIDE)
        logits = self.count_head(fused).logits[..., :h, :w].contiguous()
        embedding = offsets = None
        if self.mask_head is not None and with_embedding:
            embedding = self.mask_head(fused).embedding[..., :h, :w].contiguous()
        if self.offset_head is not None:
            offsets = self.offset_head(fused)[..., :h, :w].contiguous()
        return ModelOutput(logits=logits, embedding=embedding, offsets=offsets)

    def add_mask_head(self) -> MaskHead:
        """Build the mask head if absent (and record it in ``cfg``); returns it."""
        if self.mask_head is None:
            head = MaskHead(self.cfg.neck_channels, self.cfg.mask_channels, self.cfg.embed_dim)
            self.mask_head = head.to(self.mean.device)
            self.cfg.mask_head = True
        return self.mask_head

    def add_offset_head(self) -> OffsetHead:
        """Build the offset head if absent (and record it in ``cfg``); returns it."""
        if self.offset_head is None:
            head = OffsetHead(self.cfg.neck_channels, self.cfg.offset_channels)
            self.offset_head = head.to(self.mean.device)
            self.cfg.offset_head = True
        return self.offset_head


def _pad_to(size: int, multiple: int = PAD_MULTIPLE) -> int:
    """Padding that brings ``size`` up to a multiple of ``multiple`` (traceable:
    :func:`~xmask.models.backbones.ceil_div`)."""
    return ceil_div(size, multiple) * multiple - size


def build_model(cfg: ModelConfig | None = None) -> XMaskModel:
    """An :class:`XMaskModel` for ``cfg`` (defaults: :class:`ModelConfig`)."""
    return XMaskModel(cfg if cfg is not None else ModelConfig())


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def param_groups(model: XMaskModel, lr: float, backbone_lr: float) -> list[dict[str, Any]]:
    """Optimiser groups: the backbone at ``backbone_lr``, everything else at ``lr``.

    Frozen parameters (``requires_grad=False``) are left out, and so are empty groups.
    """
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    ids = {id(p) for p in model.backbone.parameters()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [
        {"params": backbone, "lr": backbone_lr, "name": "backbone"},
        {"params": rest, "lr": lr, "name": "heads"},
    ]
    return [g for g in groups if g["params"]]
