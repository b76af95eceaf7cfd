"""Fixtures of the analysis tests: a Hub-compatible server holding published-style runs, and a local root."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")  # the server sends no Xet headers; this keeps it that way
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from ..hubserver import HubServer
from .analysis_runs import LocalRun, PublishedRun, build_local_root, publish_runs


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    """The Hub-compatible server (Hub and CDN origins on 127.0.0.1); small tree pages exercise paging."""
    with HubServer(tmp_path_factory.mktemp("hub-storage"), page_size=3) as server:
        yield server


@pytest.fixture(scope="session")
def published(hub_server: HubServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, PublishedRun]:
    """The three published-style runs, keyed ``datadecide``, ``olmo``, ``pythia``."""
    return publish_runs(hub_server, tmp_path_factory.mktemp("publish-scratch"))


@pytest.fixture
def hub(hub_server: HubServer, published: dict[str, PublishedRun]) -> HubServer:
    """The server with the published runs, its request log cleared for this test."""
    hub_server.clear_requests()
    return hub_server


@pytest.fixture(scope="session")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> LocalRun:
    """A local weightslab root (shared: tests must not modify it; copy it first)."""
    return build_local_root(tmp_path_factory.mktemp("local-root") / "run")
