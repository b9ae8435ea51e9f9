"""Explanations for PyTorch classifiers: ``from engine import explain``."""

from engine.explain import Explanation, Prediction, explain
from engine.models import MODELS, load_model
from engine.registry import all_methods, get_method

__all__ = [
    "MODELS",
    "Explanation",
    "Prediction",
    "all_methods",
    "explain",
    "get_method",
    "load_model",
]
