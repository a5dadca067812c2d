"""The multi-process trainer tests import their harness from this directory; the custom-task
example (`custom_task.sine`) is importable as it is in the trainer image."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
