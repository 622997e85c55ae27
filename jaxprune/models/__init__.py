"""Flax models with prunable structure.

Each architecture module (``bert``, ``switch``, ``vgg``, ``resnet``, ``two_layer``) provides a
config with named ``PRESETS`` and ``from_preset``, the Flax module (accepting per-group gates at
apply time), its group ids per structure kind (built with :mod:`jaxprune.masks.groups`), a FLOP
count and compaction.  ``MLP`` and ``SmallCNN`` are small analysis models.
"""

from jaxprune.models import bert, mlp, moe, resnet, switch, two_layer, vgg
from jaxprune.models.attention import SelfAttention
from jaxprune.models.bert import Bert, BertConfig
from jaxprune.models.cnn import SmallCNN
from jaxprune.models.mlp import MLP
from jaxprune.models.moe import SwitchFFN
from jaxprune.models.resnet import ResNet, ResNetConfig
from jaxprune.models.switch import Switch, SwitchConfig
from jaxprune.models.two_layer import TwoLayer, TwoLayerConfig
from jaxprune.models.vgg import VGG, VGGConfig

__all__ = [
    "MLP",
    "VGG",
    "Bert",
    "BertConfig",
    "ResNet",
    "ResNetConfig",
    "SelfAttention",
    "SmallCNN",
    "Switch",
    "SwitchConfig",
    "SwitchFFN",
    "TwoLayer",
    "TwoLayerConfig",
    "VGGConfig",
    "bert",
    "mlp",
    "moe",
    "resnet",
    "switch",
    "two_layer",
    "vgg",
]
