"""Structured, readable logs: one line per event, the rank in every line.

`key=value` by default (readable in `kubectl logs`); `COXSWAIN_LOG_FORMAT=json` gives one JSON
object per line for log pipelines. Lines go to stderr so stdout stays free for the user's code.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, TextIO


def _render_value(value: Any) -> str:
    text = f"{value:.6g}" if isinstance(value, float) else str(value)
    # Quote only when needed so the common case stays easy to read and to grep.
    if not text or any(c in text for c in ' ="\n\t'):
        return json.dumps(text)
    return text


class EventLog:
    """Writes `event` lines with fields; one instance per process, told its rank once known."""

    def __init__(self, stream: TextIO | None = None, json_format: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.json_format = (
            os.environ.get("COXSWAIN_LOG_FORMAT", "").lower() == "json"
            if json_format is None
            else json_format
        )
        self.rank: int | str = os.environ.get("RANK", "-")

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        now = time.time()
        record: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z",
            "level": level,
            "rank": self.rank,
            "event": event,
        }
        record.update({k: v for k, v in fields.items() if v is not None})
        if self.json_format:
            line = json.dumps(record, default=str)
        else:
            line = " ".join(f"{k}={_render_value(v)}" for k, v in record.items())
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed stream must never take the training run down with it

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)


log = EventLog()
