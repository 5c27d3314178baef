"""CIFAR ResNets and a registry: ``build_model("resnet18")``, ``list_models()``."""

from . import resnet, resnet_cifar  # noqa: F401  (registers the models)
from .registry import build_model, list_models, parameter_count, register_model

__all__ = ["build_model", "list_models", "parameter_count", "register_model"]
