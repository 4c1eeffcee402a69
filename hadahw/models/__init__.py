"""Layer-shape definitions of reference networks (no torchvision needed)."""

from hadahw.models.shapes import MODELS, Layer, get_model, weight_layers

__all__ = ["MODELS", "Layer", "get_model", "weight_layers"]
