"""Shared fixtures: tiny seeded SD 1.x / SD 2.x / SDXL pipelines (see ``_tiny.py``), an isolated registry and a
network-free Hugging Face environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import _tiny  # tests/ is on sys.path (pytest's default rootdir-relative import mode)


@pytest.fixture(autouse=True)
def _no_hub_overrides(monkeypatch):
    """Tests never inherit Hub endpoint/offline settings from the caller's shell; each sets what it needs."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "ROBUST_ENCODERS_HUB_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture
def hf_cache(tmp_path) -> Path:
    """An empty Hugging Face cache folder (pass it as ``cache_dir=``)."""
    path = tmp_path / "hf-cache"
    path.mkdir()
    return path


@pytest.fixture
def sd1_pipe():
    return _tiny.build_sd1_pipe()


@pytest.fixture
def sd2_pipe():
    return _tiny.build_sd2_pipe()


@pytest.fixture
def sdxl_pipe():
    return _tiny.build_sdxl_pipe()


@pytest.fixture
def registry_sandbox():
    """Lets a test register entries; the registry is restored afterwards."""
    from robust_encoders import registry

    registry._registry()
    saved = list(registry._specs or [])
    yield registry
    registry._specs = saved


@pytest.fixture
def closed_port() -> int:
    """A loopback TCP port with nothing listening (connections are refused at once)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pytest_report_header(config):
    return f"robust-encoders tests (HF cache isolated per test; pid {os.getpid()})"


def pytest_collection_modifyitems(config, items):
    """`slow` tests (full measurements on the miniature world) run only with RUN_SLOW=1, as in diffusers."""
    if os.environ.get("RUN_SLOW", "0").lower() in ("1", "true", "yes"):
        return
    skip = pytest.mark.skip(reason="slow measurement; set RUN_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
