"""Traffic splits, weights parsing, settings from env, the CPU limit."""

from __future__ import annotations

import collections
import random

import pytest
from pydantic import ValidationError

from coxswain_server.cpu_limit import cpu_limit
from coxswain_server.settings import ServerSettings, parse_weights
from coxswain_server.traffic import TrafficSplit, parse_traffic_document

pytestmark = pytest.mark.unit


def test_split_follows_the_weights() -> None:
    random.seed(0)
    split = TrafficSplit({"v1": 90, "v2": 10, "v3": 0})
    counts = collections.Counter(split.pick() for _ in range(20000))
    assert counts["v3"] == 0
    assert 0.08 < counts["v2"] / 20000 < 0.12
    assert split.percent("v1") == 90.0


def test_single_version_and_empty_splits() -> None:
    assert TrafficSplit({"v1": 5, "v2": 0}).pick() == "v1"
    assert TrafficSplit({}).pick() is None


def test_weights_from_text_and_documents() -> None:
    assert parse_weights("v1=90, v2=10") == {"v1": 90, "v2": 10}
    with pytest.raises(ValueError, match="VERSION=PERCENT"):
        parse_weights("v1")
    assert parse_traffic_document({"weights": {"v1": 1}}, "f") == {"v1": 1}
    assert parse_traffic_document({"v1": 1, "v2": 3}, "f") == {"v1": 1, "v2": 3}
    for bad in ({"weights": {"v1": 0}}, {"v1": -1}, {"v1": 1.5}, [], {"v1": True}):
        with pytest.raises(ValueError, match=r"weight|expected"):
            parse_traffic_document(bad, "f")


def test_settings_come_from_env_and_flags_win() -> None:
    env = {
        "COXSWAIN_SERVER_REPOSITORY": "/models",
        "COXSWAIN_SERVER_MODEL": "digits",
        "COXSWAIN_SERVER_VERSIONS": "v1,v2",
        "COXSWAIN_SERVER_WEIGHTS": "v1=90,v2=10",
        "COXSWAIN_SERVER_MAX_BATCH_SIZE": "16",
    }
    settings = ServerSettings.from_sources({"max_batch_size": 64}, env)
    assert settings.versions == ["v1", "v2"]
    assert settings.weights == {"v1": 90, "v2": 10}
    assert settings.max_batch_size == 64
    with pytest.raises(ValidationError, match="not among versions"):
        ServerSettings.from_sources({"weights": "v3=1"}, env)
    with pytest.raises(ValidationError, match="max_batch_size"):
        ServerSettings.from_sources({"max_batch_size": 0}, env)


def test_cpu_limit_reads_the_env_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COXSWAIN_CPU_LIMIT", "1.5")
    assert cpu_limit() == 2
    monkeypatch.setenv("COXSWAIN_CPU_LIMIT", "0.2")
    assert cpu_limit() == 1
    monkeypatch.delenv("COXSWAIN_CPU_LIMIT")
    assert cpu_limit() >= 1
