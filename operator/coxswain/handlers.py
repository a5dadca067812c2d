"""Importing this module registers every kopf handler of the operator."""

from __future__ import annotations

from coxswain import startup as startup
from coxswain.trainingjob import controller as trainingjob_controller

__all__ = ["startup", "trainingjob_controller"]
