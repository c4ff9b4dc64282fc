"""Model registry: every architecture is created by name, like timm's `create_model`.

Each factory takes (num_classes, in_channels, image_size) so the same name serves
CIFAR (32x32), TinyImageNet (64x64) and the embedded 8x8 digits.

May import: bench.core.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import nn

from bench.core.suggest import unknown

Factory = Callable[..., nn.Module]
_MODELS: dict[str, Factory] = {}
_MODULES = ("small", "resnet", "preact", "wrn", "mobilenet")  # in-tree, imported on first use


def register_model(name: str) -> Callable[[Factory], Factory]:
    """Decorator: make `factory(num_classes, in_channels, image_size)` available as `name`."""

    def deco(factory: Factory) -> Factory:
        _MODELS[name] = factory
        return factory

    return deco


def _load() -> None:
    for mod in _MODULES:
        importlib.import_module(f"bench.models.{mod}")


def model_names() -> list[str]:
    """Every registered architecture name, sorted."""
    _load()
    return sorted(_MODELS)


def create_model(name: str, *, num_classes: int, in_channels: int = 3,
                 image_size: int = 32) -> nn.Module:
    """A freshly initialised `name` network for inputs of in_channels x image_size^2."""
    _load()
    if name not in _MODELS:
        raise unknown("arch", name, _MODELS)
    return _MODELS[name](num_classes=num_classes, in_channels=in_channels, image_size=image_size)
