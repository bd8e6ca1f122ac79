"""Networks: backbones (registry), neck, count head and the assembled :class:`XMaskModel`."""

from xmask.models.backbones import (
    Backbone,
    BackboneFeatures,
    WeightsError,
    build_backbone,
    list_backbones,
    register_backbone,
)
from xmask.models.count_head import CountHead, CountHeadOutput, DecodedPoints, decode_points
from xmask.models.model import (
    ModelConfig,
    XMaskModel,
    build_model,
    count_parameters,
    param_groups,
)
from xmask.models.neck import Neck

__all__ = [
    "Backbone",
    "BackboneFeatures",
    "CountHead",
    "CountHeadOutput",
    "DecodedPoints",
    "ModelConfig",
    "Neck",
    "WeightsError",
    "XMaskModel",
    "build_backbone",
    "build_model",
    "count_parameters",
    "decode_points",
    "list_backbones",
    "param_groups",
    "register_backbone",
]
