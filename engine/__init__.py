"""Explanations for PyTorch classifiers: ``from engine import explain``."""

from engine.catalogue import all_methods, get_method
from engine.explain import explain
from engine.models import MODELS, load_model
from engine.result import Explanation, Prediction

__all__ = [
    "MODELS",
    "Explanation",
    "Prediction",
    "all_methods",
    "explain",
    "get_method",
    "load_model",
]
