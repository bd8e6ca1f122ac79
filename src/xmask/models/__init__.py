"""Networks: backbones (registry), neck, count head and the assembled :class:`XMaskModel`.

Importing the package registers every backbone (:mod:`xmask.models.vgg`,
:mod:`xmask.models.efficientnet_lite`) with :func:`~xmask.models.backbones.register_backbone`.
"""

from xmask.models.backbones import (
    Backbone,
    BackboneFeatures,
    WeightsError,
    build_backbone,
    list_backbones,
    register_backbone,
)
from xmask.models.count_head import CountHead, CountHeadOutput, DecodedPoints, decode_points
from xmask.models.efficientnet_lite import EfficientNetLite
from xmask.models.model import (
    ModelConfig,
    XMaskModel,
    build_model,
    count_parameters,
    param_groups,
)
from xmask.models.neck import Neck
from xmask.models.vgg import VGG16BN

__all__ = [
    "VGG16BN",
    "Backbone",
    "BackboneFeatures",
    "CountHead",
    "CountHeadOutput",
    "DecodedPoints",
    "EfficientNetLite",
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
