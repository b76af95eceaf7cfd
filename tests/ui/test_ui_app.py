"""The dashboard's server without a browser: pages, errors, the token and host checks, and the actions.

Requests go through Starlette's TestClient to the real app over a real root made by the quickstart
(``quickstart_root``, shared: tests that change a root copy it first).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from starlette.testclient import TestClient

from weightslab.inspect import open_root
from weightslab.store.manager import CheckpointManager
from weightslab.ui.actions import EXPORT_PREFIX, sweep_exports
from weightslab.ui.app import create_app
from weightslab.ui.server import allowed_hosts, is_loopback

BASE = "http://127.0.0.1"


def ls(root: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "weightslab.cli.main", "ls", str(root), "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def show(root: Path, exp: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "weightslab.cli.main", "show", str(root), exp, "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


@pytest.fixture
def root_copy(quickstart_root: Path, tmp_path: Path) -> Path:
    target = tmp_path / "quickstart"
    shutil.copytree(quickstart_root, target)
    return target


def client_for(root: Path | str) -> TestClient:
    return TestClient(create_app(str(root)), base_url=BASE)


@pytest.fixture
def client(quickstart_root: Path) -> Iterator[TestClient]:
    with client_for(quickstart_root) as c:
        yield c


def token(c: TestClient) -> str:
    page = c.get("/").text
    found = re.search(r'name="weightslab-token" content="([^"]+)"', page)
    assert found, page[:500]
    return found.group(1)


def post(c: TestClient, url: str, body: dict[str, Any] | None = None) -> Any:
    return c.post(url, json=body or {}, headers={"X-Weightslab-Token": token(c)})


def wait_job(c: TestClient, job: dict[str, Any]) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + 120
    while job["state"] == "running":
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
        job = c.get(f"/api/jobs/{job['id']}").json()
    return job


def experiments(root: Path) -> list[str]:
    return [e["exp_hash"] for e in ls(root)["experiments"]]


# -- pages ---------------------------------------------------------------------------------------------
def test_every_page_declares_utf8_and_loads_nothing_from_elsewhere(
    client: TestClient, quickstart_root: Path
) -> None:
    first, second, active = experiments(quickstart_root)
    pages = ["/", f"/exp/{active}", f"/compare?a={first}&b={second}", "/journal", f"/journal?exp={second}"]
    for url in pages:
        r = client.get(url)
        assert r.status_code == 200, (url, r.text[:300])
        assert '<meta charset="utf-8">' in r.text
        assert r.headers["content-security-policy"].startswith("default-src 'self'")
        for ref in re.findall(r'(?:src|href)="([^"]+)"', r.text):
            assert ref.startswith(("/", "#")), (url, ref)  # every asset and link stays on this server
    for asset in ("/static/app.js", "/static/app.css", "/static/vendor/uplot/uPlot.iife.min.js"):
        assert client.get(asset).status_code == 200


def test_overview_lists_the_experiments_and_the_lineage(client: TestClient, quickstart_root: Path) -> None:
    first, second, active = experiments(quickstart_root)
    html = client.get("/").text
    for h in (first, second, active):
        assert f'data-exp="{h}"' in html
    assert f'<g class="edge branch" data-from="{first}" data-to="{second}"' in html or (
        f'data-from="{first}"' in html and f'data-to="{second}"' in html
    )
    assert "config_change @ 100" in html and "model_change @ 220" in html


def test_metric_curves_join_the_lineage_and_mark_the_best(client: TestClient, quickstart_root: Path) -> None:
    listing = ls(quickstart_root)
    first, second, active = (e["exp_hash"] for e in listing["experiments"])
    data = client.get(f"/api/exp/{active[:8]}/metrics").json()
    assert [s["exp_hash"] for s in data["segments"]] == [first, second, active]
    val = next(m for m in data["metrics"] if m["name"] == "val/loss")
    expected_steps = [
        c["step"] for h in (first, second, active) for c in show(quickstart_root, h)["checkpoints"]
    ]
    assert val["steps"] == sorted(expected_steps)
    own = [c for c in show(quickstart_root, active)["checkpoints"]]
    values = dict(zip(val["steps"], val["series"][2], strict=True))
    for c in own:
        assert values[c["step"]] == pytest.approx(c["metrics"]["val/loss"])
    best = listing["experiments"][2]["best"]
    assert val["best"] == {"step": best["step"], "value": pytest.approx(best["value"])}
    assert val["mode"] == "min"
    # the active experiment's curve starts where its parent's ends (step 200), so it is one line
    assert values[200] is not None and dict(zip(val["steps"], val["series"][1], strict=True))[200] is not None


def test_unknown_experiment_and_bad_step_are_messages_not_tracebacks(client: TestClient) -> None:
    r = client.get("/exp/ffffffffffff")
    assert r.status_code == 404
    assert 'class="error"' in r.text and "Traceback" not in r.text and "ffffffffffff" in r.text
    r = client.get("/api/exp/ffff/metrics")
    assert r.status_code == 404 and "ffff" in r.json()["error"]
    assert client.get("/no/such/page").status_code == 404


def test_a_folder_that_is_not_a_root_says_so(tmp_path: Path) -> None:
    with client_for(tmp_path) as c:
        r = c.get("/")
        assert r.status_code == 200  # the page renders and keeps polling until a training writes here
        assert "not a weightslab root" in r.text and 'class="error"' in r.text
        assert "not a weightslab root" in c.get("/fragments/overview").text
        assert c.get("/journal").status_code == 404
    assert not (tmp_path / "checkpoints").exists()  # looking never creates a root


# -- the guards ------------------------------------------------------------------------------------------
def test_actions_need_the_page_token(root_copy: Path) -> None:
    active = experiments(root_copy)[2]
    with client_for(root_copy) as c:
        for headers in ({}, {"X-Weightslab-Token": "guessed"}):
            r = c.post(f"/api/exp/{active}/checkpoints/300/delete", headers=headers)
            assert r.status_code == 403 and "token" in r.json()["error"]
    assert 300 in [c["step"] for c in show(root_copy, active)["checkpoints"]]


def test_a_foreign_host_header_is_refused(client: TestClient) -> None:
    assert client.get("/", headers={"Host": "evil.example:8765"}).status_code == 400
    assert client.get("/", headers={"Host": "localhost:8765"}).status_code == 200


def test_requests_another_site_makes_are_refused(client: TestClient, quickstart_root: Path) -> None:
    active = experiments(quickstart_root)[2]
    export = f"/exp/{active}/checkpoints/399/export.zip"
    for site in ("cross-site", "same-site"):  # what a browser sends for an <img> or a form of another page
        r = client.get(export, headers={"Sec-Fetch-Site": site})
        assert r.status_code == 403 and "other web sites" in r.json()["error"]
    assert client.get(export, headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200
    assert client.get("/", headers={"Sec-Fetch-Site": "none"}).status_code == 200  # typed in the address bar


def test_the_allowed_host_names_never_include_a_wildcard() -> None:
    assert set(allowed_hosts("127.0.0.1")) == {"127.0.0.1", "localhost", "::1", "[::1]"}
    assert "127.0.0.2" in allowed_hosts("127.0.0.2")  # any loopback address it is bound to
    wide = allowed_hosts("0.0.0.0", extra=["box.example.org"])
    assert "*" not in wide and "0.0.0.0" not in wide and "box.example.org" in wide and "127.0.0.1" in wide
    with TestClient(
        create_app("unused", allowed_hosts=allowed_hosts("127.0.0.2")), base_url="http://127.0.0.2"
    ) as c:
        assert c.get("/static/app.css").status_code == 200


def test_bad_action_input_is_a_message(client: TestClient, quickstart_root: Path) -> None:
    active = experiments(quickstart_root)[2]
    tag = f"/api/exp/{active}/checkpoints/300/tag"
    for body, words in (
        ({"tags": ["a"]}, "one comma-separated string"),
        ({"tags": "a", "description": {"x": 1}}, "must be a string"),
        ({"tags": "a", "description": "d" * 2001}, "at most 2,000"),
    ):
        r = post(client, tag, body)
        assert r.status_code == 400 and words in r.json()["error"], r.text
    r = post(client, "/api/gc", {"dry_run": "yes"})
    assert r.status_code == 400 and "dry_run" in r.json()["error"]
    r = client.get(f"/exp/{active}/checkpoints/{'9' * 5000}/export.zip")
    assert r.status_code == 400 and "not a step number" in r.text and "int_max_str_digits" not in r.text
    check = client.get(f"/api/exp/{active}/checkpoints/123/export")
    assert check.status_code == 404 and "123" in check.json()["error"]
    ok = client.get(f"/api/exp/{active}/checkpoints/399/export").json()
    assert ok["exp_hash"] == active and ok["step"] == 399 and ok["bytes"] > 0


def test_export_folders_left_behind_are_swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    old, new = tmp_path / f"{EXPORT_PREFIX}old", tmp_path / f"{EXPORT_PREFIX}new"
    for folder in (old, new):
        folder.mkdir()
        (folder / "x.zip").write_bytes(b"zip")
    os.utime(old, (1, 1))
    assert sweep_exports() == 1
    assert not old.exists() and new.exists()


def test_loopback_detection() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.4", "::", "example.com"))


# -- actions ---------------------------------------------------------------------------------------------
def test_verify_reports_ok_then_names_a_corrupt_file(root_copy: Path) -> None:
    second = experiments(root_copy)[1]
    with client_for(root_copy) as c:
        job = wait_job(c, post(c, "/api/verify").json())
        assert job["state"] == "done" and job["result"]["healthy"]
        assert job["result"]["ok"] == job["result"]["checked"] == 9
        assert re.search(r'class="verify ok">OK<', c.get(f"/fragments/exp/{second}/checkpoints").text)

        step_file = next((root_copy / "checkpoints" / second / "model").glob("*_step_000150.pt"))
        data = bytearray(step_file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        step_file.write_bytes(bytes(data))
        job = wait_job(c, post(c, "/api/verify", {"exp_hash": second[:8]}).json())
        result = job["result"]
        assert not result["healthy"] and result["checked"] == 4 and result["ok"] == 3
        assert result["statuses"][f"{second}@150"].startswith("corrupt")
        table = c.get(f"/fragments/exp/{second}/checkpoints").text
        assert re.search(r'data-step="150".*?class="verify problems">corrupt', table, re.S)


def test_tag_and_describe_are_recorded_in_the_manifest(root_copy: Path) -> None:
    active = experiments(root_copy)[2]
    with client_for(root_copy) as c:
        r = post(
            c, f"/api/exp/{active}/checkpoints/300/tag", {"tags": "good, före", "description": "the één"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["tags"] == ["good", "före"]
        assert '<span class="tag">före</span>' in c.get(f"/fragments/exp/{active}/checkpoints").text
        bad = post(c, f"/api/exp/{active}/checkpoints/300/tag", {"tags": "x" * 101})
        assert bad.status_code == 400 and "100 printable characters" in bad.json()["error"]
    record = next(c for c in show(root_copy, active)["checkpoints"] if c["step"] == 300)
    assert record["tags"] == ["good", "före"] and record["description"] == "the één"


def test_delete_removes_file_and_entry_but_never_a_protected_checkpoint(root_copy: Path) -> None:
    active = experiments(root_copy)[2]
    folder = root_copy / "checkpoints" / active / "model"
    with client_for(root_copy) as c:
        refused = post(c, f"/api/exp/{active}/checkpoints/399/delete")
        assert refused.status_code == 409 and "newest" in refused.json()["error"]
        html = c.get(f"/fragments/exp/{active}/checkpoints").text
        assert re.search(r'data-action="delete"[^>]*data-step="399"[^>]*disabled', html)
        r = post(c, f"/api/exp/{active}/checkpoints/300/delete")
        assert r.status_code == 200, r.text
        assert 'data-step="300"' not in c.get(f"/fragments/exp/{active}/checkpoints").text
        missing = post(c, f"/api/exp/{active}/checkpoints/300/delete")
        assert missing.status_code == 404
    assert not list(folder.glob("*_step_000300.pt")) and list(folder.glob("*_step_000399.pt"))
    assert [c["step"] for c in show(root_copy, active)["checkpoints"]] == [250, 350, 399]
    events = [json.loads(x) for x in (root_copy / "logs" / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "checkpoint_deleted" and e.get("step") == 300 for e in events)


def test_writing_actions_are_refused_while_a_training_holds_the_root(root_copy: Path) -> None:
    active = experiments(root_copy)[2]
    training = CheckpointManager(root_copy, mode="w")  # what a running system holds
    try:
        with client_for(root_copy) as c:
            for url, body in (
                (f"/api/exp/{active}/checkpoints/300/delete", None),
                (f"/api/exp/{active}/checkpoints/300/tag", {"tags": "x"}),
            ):
                r = post(c, url, body)
                assert r.status_code == 409 and "already open for writing" in r.json()["error"], r.text
            gc = wait_job(c, post(c, "/api/gc", {"dry_run": False}).json())
            assert gc["state"] == "failed" and "already open for writing" in gc["error"]
            dry = wait_job(c, post(c, "/api/gc", {"dry_run": True}).json())  # reading is fine
            assert dry["state"] == "done" and dry["result"]["dry_run"] is True
            verify = wait_job(c, post(c, "/api/verify").json())
            assert verify["state"] == "done" and verify["result"]["healthy"]
            assert c.get(f"/exp/{active}/checkpoints/300/export.zip").status_code == 200
    finally:
        training.close()
    assert 300 in [c["step"] for c in show(root_copy, active)["checkpoints"]]


def test_export_downloads_a_zip_of_the_safetensors_and_config(
    client: TestClient, quickstart_root: Path
) -> None:
    active = experiments(quickstart_root)[2]
    r = client.get(f"/exp/{active}/checkpoints/399/export.zip")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert f"{active}_step_000399_safetensors.zip" in r.headers["content-disposition"]
    names = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
    assert sorted(names) == ["checkpoint.json", "config.yaml", "model.safetensors"]
    pt = client.get(f"/exp/{active}/checkpoints/399/export.zip?format=pt")
    assert "checkpoint.pt" in zipfile.ZipFile(io.BytesIO(pt.content)).namelist()
    bad = client.get(f"/exp/{active}/checkpoints/399/export.zip?format=onnx")
    assert bad.status_code == 400 and "onnx" in bad.text


def test_gc_dry_run_then_run(root_copy: Path) -> None:
    stray = root_copy / "checkpoints" / experiments(root_copy)[0] / "model" / ".x_step_000001.pt.tmp-1-abc"
    stray.write_bytes(b"half a file")
    with client_for(root_copy) as c:
        dry = wait_job(c, post(c, "/api/gc", {"dry_run": True}).json())["result"]
        assert [i["kind"] for i in dry["removed"]] == ["leftover"] and stray.exists()
        run = wait_job(c, post(c, "/api/gc", {"dry_run": False}).json())["result"]
        assert [i["kind"] for i in run["removed"]] == ["leftover"] and not stray.exists()
    assert len(show(root_copy, experiments(root_copy)[2])["checkpoints"]) == 4


def test_compare_shows_the_lr_change_with_both_values(client: TestClient, quickstart_root: Path) -> None:
    first, second, _ = experiments(quickstart_root)
    html = client.get(f"/compare?a={first[:8]}&b={second[:8]}").text
    row = re.search(r'<tr data-key="config.lr">(.*?)</tr>', html, re.S)
    assert row, html[:2000]
    assert '<td class="before">0.01</td>' in row.group(1) and '<td class="after">0.003</td>' in row.group(1)
    assert 'data-key="optimizers.optimizer.param_groups.0.lr"' in html
    bad = client.get(f"/compare?a={first[:8]}&b=nothere")
    assert bad.status_code == 200 and 'class="error"' in bad.text and "nothere" in bad.text


def test_journal_is_newest_first_and_filters_by_experiment(client: TestClient, quickstart_root: Path) -> None:
    second = experiments(quickstart_root)[1]
    events = [json.loads(x) for x in (quickstart_root / "logs" / "events.jsonl").read_text().splitlines()]
    html = client.get("/journal").text
    shown = re.findall(r'<li data-event="([^"]+)"', html)
    assert shown == [e["event"] for e in reversed(events)]
    only = client.get(f"/fragments/journal?exp={second}").text
    assert 'data-event="system_opened"' not in only and 'data-event="experiment_created"' in only


def test_the_command_serves_on_loopback_and_stops(quickstart_root: Path) -> None:
    import urllib.request

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "weightslab.cli.main",
            "ui",
            str(quickstart_root),
            "--port",
            "0",
            "--no-browser",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"serving .* at (http://127\.0\.0\.1:\d+/)", line)
        assert found, line + (proc.stdout.read() if proc.poll() is not None else "")
        with urllib.request.urlopen(found.group(1), timeout=60) as r:
            assert r.status == 200 and 'table id="experiments"' in r.read().decode()
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=60) == 0
    assert proc.stdout.read().strip().endswith("weightslab: stopped")
    assert open_root(quickstart_root).experiments()  # the root is untouched and still opens
