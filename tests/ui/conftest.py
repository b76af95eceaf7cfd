"""Fixtures for the browser tests of `weightslab ui`: the quickstart's root, real servers, headless Chromium.

Every server listens on 127.0.0.1; every page fails its test when it sends a request anywhere else or
logs a console error. Without Playwright or /usr/bin/chromium the browser tests skip with a reason.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "examples" / "quickstart.py"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVING = re.compile(r"serving .* at (http://127\.0\.0\.1:\d+/)")
# generous: the suite must pass on a machine five times slower than a laptop
DEADLINE_S = 60.0
TIMEOUT_MS = 60_000
LOCAL_SCHEMES = {"http", "https", "ws", "wss"}


def run_cli(*args: str | Path) -> dict[str, Any]:
    """Run ``weightslab ARGS --json`` in a subprocess and return its parsed output."""
    done = subprocess.run(
        [sys.executable, "-m", "weightslab.cli.main", *map(str, args), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"weightslab {' '.join(map(str, args))} failed:\n{done.stdout}{done.stderr}"
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def run_training(root: Path, *args: str) -> None:
    """Run the quickstart's training loop on ``root`` (``args``: e.g. ``--phase train --stop-at 30``)."""
    subprocess.run([sys.executable, str(QUICKSTART), str(root), *args], check=True, capture_output=True)


@pytest.fixture(scope="session")
def quickstart_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart's root, made once per session: copy it before changing it."""
    root = tmp_path_factory.mktemp("quickstart-session") / "quickstart"
    subprocess.run([sys.executable, str(QUICKSTART), str(root)], check=True, capture_output=True)
    return root


@pytest.fixture(scope="session")
def quickstart_experiments(quickstart_root: Path) -> dict[str, str]:
    """The quickstart's experiments by role: ``root`` (first), ``config`` (lr change), ``model`` (pruned)."""
    listing = run_cli("ls", quickstart_root)
    by_reason = {(e["parent"] or {}).get("reason", "root"): e["exp_hash"] for e in listing["experiments"]}
    assert set(by_reason) == {"root", "config_change", "model_change"}, listing
    assert listing["active"] == by_reason["model_change"]
    return {
        "root": by_reason["root"],
        "config": by_reason["config_change"],
        "model": by_reason["model_change"],
    }


@dataclass
class UIServer:
    """One `weightslab ui` subprocess; ``url`` ends with ``/``, ``output`` holds what it printed."""

    root: Path
    process: subprocess.Popen[str]
    url: str = ""
    output: list[str] = field(default_factory=list)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_ui_server(root: Path) -> UIServer:
    """Start ``weightslab ui ROOT --port 0 --no-browser`` and wait for the URL it announces.

    It runs two folders above ``root`` and is given the path from there (``runs/quickstart``), so the
    pages show what a user who typed that sees (the screenshots in guides/ come from these pages).
    Raises (pytest.fail) with the process's output when it exits, or stays silent, before the URL.
    """
    root = root.resolve()
    where = root.parent.parent
    source = str(root.relative_to(where))
    process = subprocess.Popen(
        [sys.executable, "-m", "weightslab.cli.main", "ui", source, "--port", "0", "--no-browser"],
        cwd=where,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    server = UIServer(root=root, process=process)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        # drains the pipe for the server's whole life: a full pipe would block its writes
        assert process.stdout is not None
        for line in process.stdout:
            server.output.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            process.wait()
            pytest.fail(
                f"weightslab ui exited ({process.returncode}) before serving:\n{''.join(server.output)}"
            )
        match = SERVING.search(line)
        if match:
            server.url = match.group(1)
            return server
    server.stop()
    pytest.fail(f"weightslab ui printed no URL within {DEADLINE_S:.0f} s:\n{''.join(server.output)}")


@pytest.fixture
def ui_server() -> Iterator[Callable[[Path], UIServer]]:
    """A factory: ``ui_server(root)`` starts a server on ``root``; all are stopped at teardown."""
    started: list[UIServer] = []

    def start(root: Path) -> UIServer:
        server = start_ui_server(root)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def shared_server(quickstart_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UIServer]:
    """One server for the views that only read, on its own copy so the session root stays pristine."""
    copy = tmp_path_factory.mktemp("shared") / "runs" / "quickstart"
    shutil.copytree(quickstart_root, copy)
    server = start_ui_server(copy)
    yield server
    server.stop()


@pytest.fixture
def writable_root(quickstart_root: Path, tmp_path: Path) -> Path:
    """A private copy of the quickstart's root for a test whose actions change it."""
    copy = tmp_path / "runs" / "quickstart"
    shutil.copytree(quickstart_root, copy)
    return copy


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright (skips when either is missing)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.skip(f"playwright is not installed ({exc}): pip install 'playwright>=1.44'")
    if not CHROMIUM.is_file() or not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    manager = sync_playwright().start()
    try:
        launched = manager.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()
    finally:
        manager.stop()


def _is_local(url: str) -> bool:
    parts = urlsplit(url)
    # data: and blob: URLs never reach the network
    return parts.scheme not in LOCAL_SCHEMES or parts.hostname == "127.0.0.1"


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh 1280x900 page that aborts, and fails the test for, any request not to 127.0.0.1 and
    fails it for any console error or uncaught page error."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    requests: list[str] = []
    errors: list[str] = []

    def route(r: Any) -> None:
        if _is_local(r.request.url):
            r.continue_()
        else:
            r.abort()

    context.route("**/*", route)
    new = context.new_page()
    new.on("request", lambda request: requests.append(request.url))
    new.on(
        "console",
        lambda message: (
            errors.append(f"console: {message.text} ({message.location})")
            if message.type == "error"
            else None
        ),
    )
    new.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    yield new
    context.close()
    foreign = [url for url in requests if not _is_local(url)]
    assert not foreign, f"requests left 127.0.0.1: {foreign}"
    assert not errors, "the page logged errors:\n" + "\n".join(errors)


@pytest.fixture
def shot(tmp_path: Path) -> Callable[[Any, str], Path]:
    """``shot(page, name)``: a full-page screenshot into tmp_path, and into
    ``$WEIGHTSLAB_UI_SCREENSHOTS/<name>.png`` when that is set (how guides/images/ui/ is refreshed)."""

    def take(page: Any, name: str) -> Path:
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        folder = os.environ.get("WEIGHTSLAB_UI_SCREENSHOTS")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(folder) / f"{name}.png")
        return path

    return take
