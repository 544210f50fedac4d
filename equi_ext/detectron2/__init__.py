"""Detectron2 adapter."""

from .datasets import register_synthetic_shapes

__all__ = ["register_synthetic_shapes"]
