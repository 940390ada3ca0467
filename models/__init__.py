"""Classifiers by name; see `models.registry`."""

from models.registry import get_model

__all__ = ['get_model']
