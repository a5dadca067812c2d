"""Fixtures for the chart's tests: the helm binary, and the chart installed as a release."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
