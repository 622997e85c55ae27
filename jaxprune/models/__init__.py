"""Flax models with prunable structure, each declared once as a :class:`ModelSpec`.

Each architecture module (``mlp``, ``two_layer``, ``cnn``, ``vgg``, ``resnet``, ``bert``,
``switch``, ``resnet34``, ``mobilenet_v2``) provides a config with named ``PRESETS``, the Flax
module (accepting per-group gates at apply time), and the functions of the model protocol with
the same names and argument order everywhere:
``make_config(preset, *, num_outputs, input_shape, **overrides)``,
``group_ids(variables, config, kind)`` (built with :mod:`jaxprune.masks.groups`),
``compact(variables, config, keep, kind)`` and ``flops(config, input_shape)``.  Its ``SPEC``
gathers them; the specs below are registered in this order (:func:`model_names`), and adding a
model is one more module with a ``SPEC`` and one :func:`register_model` call.
"""

from jaxprune.models import (
    base,
    bert,
    cnn,
    mlp,
    mobilenet_v2,
    moe,
    resnet,
    resnet34,
    switch,
    two_layer,
    vgg,
)
from jaxprune.models.attention import SelfAttention
from jaxprune.models.base import ModelSpec, model_names, model_spec, register_model
from jaxprune.models.bert import Bert, BertConfig
from jaxprune.models.cnn import SmallCNN
from jaxprune.models.mlp import MLP
from jaxprune.models.mobilenet_v2 import MobileNetV2, MobileNetV2Config
from jaxprune.models.moe import SwitchFFN
from jaxprune.models.resnet import ResNet, ResNetConfig
from jaxprune.models.resnet34 import ResNet34, ResNet34Config
from jaxprune.models.switch import Switch, SwitchConfig
from jaxprune.models.two_layer import TwoLayer, TwoLayerConfig
from jaxprune.models.vgg import VGG, VGGConfig

for _module in (mlp, two_layer, cnn, vgg, resnet, bert, switch, resnet34, mobilenet_v2):
    register_model(_module.SPEC)
del _module

__all__ = [
    "MLP",
    "VGG",
    "Bert",
    "BertConfig",
    "MobileNetV2",
    "MobileNetV2Config",
    "ModelSpec",
    "ResNet",
    "ResNet34",
    "ResNet34Config",
    "ResNetConfig",
    "SelfAttention",
    "SmallCNN",
    "Switch",
    "SwitchConfig",
    "SwitchFFN",
    "TwoLayer",
    "TwoLayerConfig",
    "VGGConfig",
    "base",
    "bert",
    "cnn",
    "mlp",
    "mobilenet_v2",
    "model_names",
    "model_spec",
    "moe",
    "register_model",
    "resnet",
    "resnet34",
    "switch",
    "two_layer",
    "vgg",
]
