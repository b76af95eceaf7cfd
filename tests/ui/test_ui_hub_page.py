"""``weightslab ui hf://org/repo``: the page and its JSON, served by the real app over the test Hub."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")

from starlette.testclient import TestClient

from tests.analysis.analysis_runs import PublishedRun
from tests.analysis.conftest import hub, hub_server, published  # noqa: F401
from tests.hubserver import HubServer
from weightslab.ui.app import create_app
from weightslab.ui.hub import parse_hub_source


def poll_hub(c: TestClient) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    data = c.get("/api/hub").json()
    while data["state"] == "running":
        assert time.monotonic() < deadline, data
        time.sleep(0.05)
        data = c.get("/api/hub").json()
    return data


def test_a_hub_run_page_lists_its_branches_and_lr(
    hub: HubServer,  # noqa: F811
    published: dict[str, PublishedRun],  # noqa: F811
    tmp_path: Path,
) -> None:
    run = published["pythia"]
    source = f"hf://{run.repo_id}"
    app = create_app(
        source,
        hub_repo=parse_hub_source(source),
        hub_options={"endpoint": hub.endpoint, "cache_dir": tmp_path},
    )
    with TestClient(app, base_url="http://127.0.0.1") as c:
        page = c.get("/").text
        assert '<meta charset="utf-8">' in page and 'id="branches"' in page and run.repo_id in page
        assert 'data-nav="journal"' not in page  # a Hub run has no journal of ours
        data = poll_hub(c)
        assert data["state"] == "done", data
        rows = data["run"]["branches"]
        assert [r["branch"] for r in rows] == sorted(run.snapshots, key=lambda b: run.snapshots[b].step)
        for row in rows:
            if row["branch"] in run.with_optimizer:
                assert row["lr"] == pytest.approx(run.snapshots[row["branch"]].lrs[0])
        assert data["run"]["curves"]["lr"][0]["steps"] == [r["step"] for r in rows]
        again = c.get("/api/hub").json()  # a finished analysis is kept, not redone on every poll
        assert again["id"] == data["id"] and again["state"] == "done"
        page_token = re.search(r'name="weightslab-token" content="([^"]+)"', page)
        assert page_token
        assert c.post("/api/hub/refresh").status_code == 403  # it downloads: the page's token only
        fresh = c.post("/api/hub/refresh", headers={"X-Weightslab-Token": page_token.group(1)}).json()
        assert fresh["id"] != data["id"]
        poll_hub(c)


def test_a_missing_repo_is_a_message(hub: HubServer, tmp_path: Path) -> None:  # noqa: F811
    app = create_app(
        "hf://nobody/nothing",
        hub_repo="nobody/nothing",
        hub_options={"endpoint": hub.endpoint, "cache_dir": tmp_path},
    )
    with TestClient(app, base_url="http://127.0.0.1") as c:
        data = poll_hub(c)
        assert data["state"] == "failed" and "nobody/nothing" in data["error"]
        assert not re.search(r"Traceback|File \"", data["error"])
