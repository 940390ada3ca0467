"""Classifiers by name; see `models.registry`."""

from models.registry import from_config
from models.registry import get_model

__all__ = ['from_config', 'get_model']
