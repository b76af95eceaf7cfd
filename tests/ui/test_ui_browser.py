"""`weightslab ui` in real headless Chromium over the quickstart's root: every view, every action.

The read-only views share one server; each test whose actions change a root gets its own copy and
server. Every page fails its test on a request that leaves 127.0.0.1 or on a console error (conftest).
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.ui.conftest import TIMEOUT_MS, UIServer, run_cli, run_training
from weightslab.components import CheckpointManager

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("browser")]
# `browser` first: without Chromium the tests skip before the quickstart trains

# retention reasons that forbid deleting a checkpoint from the page ("last" and "every" do not)
PROTECTING = {"newest", "best", "branch", "protected"}


def _shown(value: float) -> str:
    """``value`` as the dashboard writes it: four significant digits, no trailing zeros."""
    return format(float(f"{value:.4g}"), "g")


def expect(target: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def short(exp_hash: str) -> str:
    return exp_hash[:8]


def confirm(page: Any) -> None:
    """Accept the confirmation every action opens first."""
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_be_visible()
    expect(page.locator("#confirm-message")).not_to_be_empty()
    page.locator("button#confirm-ok").click()
    expect(dialog).to_be_hidden()


def verified(page: Any) -> Any:
    """Wait for the verify the page started to end and return ``#verify-status`` (fails on an error)."""
    status = page.locator("#verify-status")
    expect(
        page.locator("#verify-status.ok, #verify-status.problems, #action-result .error").first
    ).to_be_visible()
    errors = page.locator("#action-result .error")
    assert errors.count() == 0, f"the verify failed: {errors.all_inner_texts()}"
    expect(status).to_have_class(re.compile(r"\bok\b"))
    return status


def open_experiment(page: Any, server: UIServer, exp_hash: str) -> None:
    page.goto(f"{server.url}exp/{exp_hash}")
    expect(page.locator("table#checkpoints tbody tr[data-step]").first).to_be_visible()


def row_steps(page: Any) -> list[int]:
    """The steps of the checkpoint table's rows, sorted (the page lists the newest first)."""
    return sorted(
        int(s)
        for s in page.locator("table#checkpoints tbody tr[data-step]").evaluate_all(
            "rows => rows.map(r => r.dataset.step)"
        )
    )


def test_overview_shows_experiments_and_lineage(
    page: Any,
    shared_server: UIServer,
    quickstart_experiments: dict[str, str],
    shot: Callable[[Any, str], Path],
) -> None:
    page.goto(shared_server.url)
    assert page.locator('meta[charset="utf-8"]').count() == 1
    for nav in ("experiments", "journal", "compare"):
        expect(page.locator(f'nav a[data-nav="{nav}"]')).to_be_visible()
    listing = run_cli("ls", shared_server.root)
    rows = page.locator("table#experiments tbody tr[data-exp]")
    expect(rows).to_have_count(len(listing["experiments"]))
    for e in listing["experiments"]:
        row = page.locator(f'table#experiments tbody tr[data-exp="{e["exp_hash"]}"]')
        expect(row.locator("td.checkpoints")).to_have_text(str(e["checkpoints"]))
        expect(row.locator("td.best")).to_contain_text(f"@ {e['best']['step']}")
        expect(row.locator("td.size")).not_to_be_empty()
        link = row.locator("td.hash a")
        assert link.get_attribute("href") == f"/exp/{e['exp_hash']}"
        parent = e["parent"]
        if parent is None:
            expect(row.locator("td.parent")).to_have_text("—")
        else:
            expect(row.locator("td.parent")).to_contain_text(short(parent["exp_hash"]))
            expect(row.locator("td.parent")).to_contain_text(f"{parent['reason']} @ {parent['step']}")
        if e["active"]:
            expect(row.locator("td.state")).to_have_text("active")
    assert listing["active"] == quickstart_experiments["model"]

    lineage = page.locator("#lineage svg")
    expect(lineage).to_be_visible()
    for h in quickstart_experiments.values():
        expect(lineage.locator(f'g.node[data-exp="{h}"]')).to_have_count(1)
    for parent, child, label in (
        (quickstart_experiments["root"], quickstart_experiments["config"], "config_change @ 100"),
        (quickstart_experiments["config"], quickstart_experiments["model"], "model_change @ 220"),
    ):
        edge = lineage.locator(f'g.edge[data-from="{parent}"][data-to="{child}"]')
        expect(edge.locator("text.edge-label")).to_have_text(label)
    shot(page, "overview")

    page.locator(f'tr[data-exp="{quickstart_experiments["config"]}"] td.hash a').click()
    expect(page.locator("h1")).to_contain_text(quickstart_experiments["config"])


def test_experiment_charts_and_checkpoint_table(
    page: Any,
    shared_server: UIServer,
    quickstart_experiments: dict[str, str],
    shot: Callable[[Any, str], Path],
) -> None:
    active = quickstart_experiments["model"]
    open_experiment(page, shared_server, active)
    expect(page.locator("h1")).to_contain_text(active)

    for metric in ("val/loss", "train/loss"):
        chart = page.locator(f'#metrics .chart[data-metric="{metric}"]')
        expect(chart.locator(".chart-title")).to_have_text(metric)
        expect(chart.locator("canvas")).to_have_count(1)
        assert _inked_pixels(chart.locator("canvas")) > 0, f"the {metric} chart drew nothing"
    # the lineage's best, as the root's listing has it (the training's last digits vary between
    # machines and runs: floating-point sums are not bitwise reproducible everywhere)
    best = min(
        (e["best"] for e in run_cli("ls", shared_server.root)["experiments"]), key=lambda b: b["value"]
    )
    expect(page.locator('#metrics .chart[data-metric="val/loss"] .best')).to_contain_text(
        f"best {_shown(best['value'])} @ {best['step']}"
    )
    # the lineage is joined: the active experiment's chart starts with its ancestors' checkpoints
    steps = page.locator('#metrics .chart[data-metric="val/loss"]').evaluate("box => box._plot.data[0]")
    assert {50, 100, 150, 179, 200} <= set(steps), steps
    assert {250, 300, 350, 399} <= set(steps), steps

    for metric in ("lr", "weight_norm"):  # the analysis starts on page load
        chart = page.locator(f'#analysis .chart[data-metric="{metric}"]')
        expect(chart.locator("canvas")).to_have_count(1, timeout=3 * TIMEOUT_MS)
        assert _inked_pixels(chart.locator("canvas")) > 0, f"the {metric} chart drew nothing"

    shown = run_cli("show", shared_server.root, active)
    want = {c["step"]: c for c in shown["checkpoints"] if not c["abandoned"]}
    assert row_steps(page) == sorted(want)
    for step, c in want.items():
        row = page.locator(f'table#checkpoints tbody tr[data-step="{step}"]')
        expect(row.locator("td.step")).to_have_text(str(step))
        expect(row.locator("td.trigger")).to_have_text(c["trigger"])
        for name in c["metrics"]:
            expect(row.locator("td.metrics")).to_contain_text(name)
        expect(row.locator("td.size")).not_to_be_empty()
        expect(row.locator("td.verify")).to_have_text("—")
        for reason in c["kept"]:
            expect(row.locator("td.kept")).to_contain_text(reason)
        delete = row.locator(f'button[data-action="delete"][data-step="{step}"]')
        if PROTECTING & set(c["kept"]):
            expect(delete).to_be_disabled()
            assert "Retention keeps it" in (delete.get_attribute("title") or "")
        else:
            expect(delete).to_be_enabled()
        expect(row.locator(f'button[data-action="tag"][data-step="{step}"]')).to_be_visible()
        expect(row.locator(f'a[data-action="export"][data-step="{step}"]')).to_be_visible()
    # 8bfbe94f@300 is kept only as one of the last four: the page may delete it
    expect(page.locator('button[data-action="delete"][data-step="300"]')).to_be_enabled()
    expect(page.locator('button[data-action="delete"][data-step="399"]')).to_be_disabled()
    shot(page, "experiment")


def _inked_pixels(canvas: Any) -> int:
    """How many pixels of a canvas are not transparent (0 for a chart that drew nothing)."""
    count: int = canvas.evaluate(
        """c => {
            const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) n++;
            return n;
        }"""
    )
    return count


def test_compare_shows_the_lr_change(
    page: Any,
    shared_server: UIServer,
    quickstart_experiments: dict[str, str],
    shot: Callable[[Any, str], Path],
) -> None:
    page.goto(shared_server.url)
    page.locator('nav a[data-nav="compare"]').click()
    form = page.locator("form#compare-form")
    expect(form).to_be_visible()
    form.locator('select[name="a"]').select_option(f"{quickstart_experiments['root']}@50")
    form.locator('select[name="b"]').select_option(f"{quickstart_experiments['config']}@100")
    form.locator('button[type="submit"]').click()
    page.wait_for_url(re.compile(r"/compare\?a=.+&b=.+"))

    for key in ("config.lr", "optimizers.optimizer.param_groups.0.lr"):
        row = page.locator(f'table#hyperparams tbody tr[data-key="{key}"]')
        expect(row.locator("td.before")).to_have_text("0.01")
        expect(row.locator("td.after")).to_have_text("0.003")
    for table in ("layers", "compare-metrics", "distance"):
        expect(page.locator(f"table#{table}")).to_be_visible()
    expect(page.locator('table#compare-metrics tr[data-metric="val/loss"]')).to_be_visible()
    shot(page, "compare")

    # names as `weightslab compare` takes them: hash prefixes, the newest checkpoint by default
    page.goto(
        f"{shared_server.url}compare?a={short(quickstart_experiments['config'])}&b={short(quickstart_experiments['model'])}"
    )
    expect(page.locator('table#hyperparams tr[data-key="config.hidden"] td.before')).to_have_text("64")
    expect(page.locator('table#hyperparams tr[data-key="config.hidden"] td.after')).to_have_text("32")
    expect(page.locator("table#layers tbody tr[data-layer]").first).to_be_visible()


def test_journal_is_a_timeline_newest_first(
    page: Any, shared_server: UIServer, shot: Callable[[Any, str], Path]
) -> None:
    page.goto(shared_server.url)
    page.locator('nav a[data-nav="journal"]').click()
    items = page.locator("ol#journal li[data-event]")
    events = CheckpointManager(shared_server.root, mode="r").events()
    expect(items).to_have_count(len(events))
    shown = items.evaluate_all("items => items.map(i => i.dataset.event)")
    assert shown == [e["event"] for e in reversed(events)]
    for part in (".time", ".event", ".exp", ".step"):
        expect(items.first.locator(part)).to_have_count(1)
    expect(items.first.locator(".event")).to_have_text(events[-1]["event"])
    shot(page, "journal")


def test_verify_reports_ok(
    page: Any,
    ui_server: Callable[[Path], UIServer],
    writable_root: Path,
    quickstart_experiments: dict[str, str],
    shot: Callable[[Any, str], Path],
) -> None:
    server = ui_server(writable_root)
    active = quickstart_experiments["model"]
    open_experiment(page, server, active)
    verify_cells = page.locator("table#checkpoints tbody tr[data-step] td.verify")
    count = verify_cells.count()
    page.locator('button[data-action="verify"]').click()
    confirm(page)
    expect(verified(page)).to_contain_text(f"{count} of {count} checkpoints verify")
    for i in range(count):
        expect(verify_cells.nth(i)).to_have_text("OK")

    page.locator('nav a[data-nav="experiments"]').click()
    total = sum(e["checkpoints"] for e in run_cli("ls", writable_root)["experiments"])
    page.locator('button[data-action="verify"]').click()
    confirm(page)
    expect(verified(page)).to_contain_text(f"{total} of {total} checkpoints verify")
    shot(page, "verify")


def test_a_live_table_that_did_not_change_keeps_its_elements(page: Any, shared_server: UIServer) -> None:
    # a refresh that replaced the same buttons would lose a click landing during it
    open_experiment(page, shared_server, run_cli("ls", shared_server.root)["active"])
    page.locator('button[data-action="delete"][data-step="300"]').evaluate("b => { window.marked = b; }")
    for _ in range(2):  # the second fragment is fetched only once the first was handled
        with page.expect_response(lambda r: "/fragments/exp/" in r.url, timeout=TIMEOUT_MS):
            pass
    assert page.evaluate("() => document.contains(window.marked)")


def test_a_live_table_that_changed_keeps_the_elements_that_did_not(
    page: Any,
    ui_server: Callable[[Path], UIServer],
    writable_root: Path,
    quickstart_experiments: dict[str, str],
) -> None:
    # another client tags step 350 and deletes step 300: the refresh changes those rows in place and
    # leaves every other button and link the same element, so a click landing during it is not lost
    server = ui_server(writable_root)
    active = quickstart_experiments["model"]
    open_experiment(page, server, active)
    marks = {
        "export": 'a[data-action="export"][data-step="350"]',
        "tag": 'button[data-action="tag"][data-step="350"]',
        "other": 'a[data-action="export"][data-step="250"]',
    }
    for name, selector in marks.items():
        page.locator(selector).evaluate(f"(e) => {{ (window.marks ||= {{}})[{name!r}] = e; }}")
    page.evaluate(
        """async ([exp]) => {
            const token = document.querySelector('meta[name="weightslab-token"]').content;
            const headers = { "Content-Type": "application/json", "X-Weightslab-Token": token };
            const base = `/api/exp/${exp}/checkpoints`;
            for (const [url, body] of [[`${base}/350/tag`, { tags: "elsewhere" }], [`${base}/300/delete`, {}]]) {
                const r = await fetch(url, { method: "POST", headers, body: JSON.stringify(body) });
                if (!r.ok) throw new Error(await r.text());
            }
        }""",
        [active],
    )
    expect(page.locator('table#checkpoints tbody tr[data-step="350"] td.tags .tag')).to_have_text(
        ["elsewhere"]
    )
    expect(page.locator('table#checkpoints tbody tr[data-step="300"]')).to_have_count(0)
    kept = page.evaluate(
        "() => Object.fromEntries(Object.entries(window.marks).map(([k, e]) => [k, document.contains(e)]))"
    )
    assert kept == {"export": True, "tag": True, "other": True}
    assert page.locator(marks["tag"]).get_attribute("data-tags") == "elsewhere"
    steps = row_steps(page)
    assert 300 not in steps and 350 in steps and 250 in steps


def test_delete_removes_the_checkpoint_from_disk_and_manifest(
    page: Any,
    ui_server: Callable[[Path], UIServer],
    writable_root: Path,
    quickstart_experiments: dict[str, str],
) -> None:
    server = ui_server(writable_root)
    active = quickstart_experiments["model"]
    open_experiment(page, server, active)
    newest = max(row_steps(page))
    expect(page.locator(f'button[data-action="delete"][data-step="{newest}"]')).to_be_disabled()

    before = {c["step"]: c for c in run_cli("show", writable_root, active)["checkpoints"]}
    step_file = writable_root / "checkpoints" / active / before[300]["file"]
    assert step_file.is_file()
    # cancelling leaves it alone
    page.locator('button[data-action="delete"][data-step="300"]').click()
    expect(page.locator("dialog#confirm")).to_be_visible()
    page.locator("button#confirm-cancel").click()
    expect(page.locator("dialog#confirm")).to_be_hidden()
    assert step_file.is_file()

    page.locator('button[data-action="delete"][data-step="300"]').click()
    confirm(page)
    expect(page.locator('table#checkpoints tbody tr[data-step="300"]')).to_have_count(0)
    expect(page.locator("#action-result")).to_contain_text(f"deleted checkpoint {short(active)} @ 300")
    assert not step_file.exists()
    after = [c["step"] for c in run_cli("show", writable_root, active)["checkpoints"]]
    assert 300 not in after
    assert sorted(after) == sorted(s for s in before if s != 300)
    assert row_steps(page) == sorted(after)


def test_export_downloads_a_zip(
    page: Any, shared_server: UIServer, quickstart_experiments: dict[str, str], tmp_path: Path
) -> None:
    open_experiment(page, shared_server, quickstart_experiments["model"])
    page.locator('a[data-action="export"][data-step="399"]').click()
    with page.expect_download() as info:
        confirm(page)
    target = tmp_path / "export.zip"
    info.value.save_as(target)
    with zipfile.ZipFile(target) as archive:
        names = archive.namelist()
        assert archive.testzip() is None
    assert any(n.endswith(".safetensors") for n in names), names
    assert any(n.endswith("config.yaml") for n in names), names


def test_tag_shows_in_the_table_and_in_show(
    page: Any,
    ui_server: Callable[[Path], UIServer],
    writable_root: Path,
    quickstart_experiments: dict[str, str],
) -> None:
    server = ui_server(writable_root)
    active = quickstart_experiments["model"]
    open_experiment(page, server, active)
    page.locator('button[data-action="tag"][data-step="350"]').click()
    dialog = page.locator("dialog#tag-dialog")
    expect(dialog).to_be_visible()
    # non-ASCII on purpose: the page must declare its charset to show it unharmed
    dialog.locator('input[name="tags"]').fill("candidate, größer")
    dialog.locator('input[name="description"]').fill("vor dem Einfrieren geprüft")
    page.locator("button#tag-ok").click()
    tags = page.locator('table#checkpoints tbody tr[data-step="350"] td.tags')
    expect(tags.locator(".tag")).to_have_text(["candidate", "größer"])
    expect(tags).to_contain_text("vor dem Einfrieren geprüft")
    entry = next(c for c in run_cli("show", writable_root, active)["checkpoints"] if c["step"] == 350)
    assert entry["tags"] == ["candidate", "größer"]
    assert entry["description"] == "vor dem Einfrieren geprüft"


def test_not_a_root_then_live_training(
    page: Any, ui_server: Callable[[Path], UIServer], tmp_path: Path
) -> None:
    empty = tmp_path / "live"
    empty.mkdir()
    server = ui_server(empty)
    page.goto(server.url)
    expect(page.locator(".error[role=alert]")).to_contain_text("not a weightslab root")
    assert "Traceback" not in page.content()

    # the page polls: once a training creates the root, the experiments appear without a reload
    run_training(empty, "--phase", "train", "--stop-at", "30")
    first = run_cli("ls", empty)["experiments"]
    assert [e["checkpoints"] for e in first] == [1]
    row = page.locator(f'table#experiments tbody tr[data-exp="{first[0]["exp_hash"]}"]')
    expect(row.locator("td.checkpoints")).to_have_text("1")
    expect(page.locator(".error")).to_have_count(0)

    # resuming adds a checkpoint to that experiment and branches a new one at the lr change
    run_training(empty, "--phase", "train", "--stop-at", "120")
    expect(row.locator("td.checkpoints")).to_have_text("2")
    expect(page.locator("table#experiments tbody tr[data-exp]")).to_have_count(2)
    expect(page.locator("#lineage g.edge text.edge-label")).to_have_text("config_change @ 100")
