"""Importing this module registers every kopf handler of the operator."""

from __future__ import annotations

from coxswain import cluster_facts as cluster_facts
from coxswain import startup as startup
from coxswain.modelservice import controller as modelservice_controller
from coxswain.trainingjob import controller as trainingjob_controller

__all__ = ["cluster_facts", "modelservice_controller", "startup", "trainingjob_controller"]
