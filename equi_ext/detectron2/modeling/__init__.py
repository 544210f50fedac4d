"""Detectron2 modeling: the equivariance-defended meta-architecture."""

from .meta_arch import EquiGeneralizedRCNN, heads_in_training

__all__ = ["EquiGeneralizedRCNN", "heads_in_training"]
