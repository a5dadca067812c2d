"""Importing this module registers every kopf handler of the operator."""

from __future__ import annotations

from coxswain import startup as startup
from coxswain.modelservice import controller as modelservice_controller
from coxswain.trainingjob import controller as trainingjob_controller

__all__ = ["modelservice_controller", "startup", "trainingjob_controller"]
