"""Coxswain: train PyTorch models across many pods and serve them as autoscaled services."""

__version__ = "0.1.0"
