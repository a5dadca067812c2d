"""The operator's process decodes plain `json.loads` calls (kopf's watch streams) with orjson;
calls with options keep the standard decoder. Run in a child process: the switch is
process-wide, and this test process must keep the standard module."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import decimal, json, orjson
from coxswain.cli.operator import use_orjson_for_plain_json_loads
standard = json.loads
use_orjson_for_plain_json_loads()
assert json.loads is not standard
event = '{"type": "MODIFIED", "object": {"metadata": {"name": "p", "resourceVersion": "12"}, "n": [1, 2.5, null, true]}}'
assert json.loads(event) == standard(event)
assert json.loads(event.encode()) == standard(event)
assert json.loads("1.5", parse_float=decimal.Decimal) == decimal.Decimal("1.5")
try:
    json.loads("{")
except json.JSONDecodeError:
    pass
else:
    raise AssertionError("a broken document decoded")
print("ok")
"""


def test_plain_loads_use_orjson_and_calls_with_options_the_standard_decoder() -> None:
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
