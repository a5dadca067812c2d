"""Kubernetes resource quantities ("500m", "2Gi", "1e3") as numbers: the one parser the
operator, its builders and the node agent share."""

from __future__ import annotations

import math
import re
from decimal import Decimal

_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)([a-zA-Z]*)$")


def parse_quantity(value: str | int | float) -> Decimal:
    """The quantity's value in base units; ValueError names the bad text."""
    if isinstance(value, int | float):
        return Decimal(str(value))
    m = _QUANTITY.match(value.strip())
    if not m or m.group(2) not in _SUFFIXES:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return Decimal(m.group(1)) * _SUFFIXES[m.group(2)]


def whole_cores(cpu: str | int | float) -> int:
    """Whole cores of a CPU quantity, rounded down, at least 1 (thread counts: a 1500m limit
    runs 1 busy thread without throttling, not 2)."""
    return max(1, math.floor(parse_quantity(cpu)))


def format_quantity(value: float) -> str:
    """A number as a quantity: whole numbers plain, others in milli-units ("1.5" -> "1500m")."""
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value * 1000)}m"
