"""The lineage graph of ``weightslab ui``: a tidy left-to-right layout of real roots, and its SVG.

The real root is trained by a real loop through config changes (one undone, so the run returns to an
earlier experiment) and a model change. The large forests are built from real ``ExperimentInfo`` and
``ParentRef`` records, which is how ``lineage`` itself builds them.
"""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest
import torch

from weightslab.format.manifest_entries import ParentRef
from weightslab.inspect import open_root
from weightslab.inspect.experiments import ExperimentInfo
from weightslab.inspect.lineage import LineageNode, Return, lineage
from weightslab.registry.ledger import Ledger
from weightslab.system.automatic import AutomaticCheckpointSystem
from weightslab.system.config import CheckpointConfig
from weightslab.ui.lineage_graph import (
    CHAR_WIDTH,
    REASON_CHARS,
    GraphNode,
    LineageGraph,
    layout_lineage,
    render_svg,
)

SVG = "{http://www.w3.org/2000/svg}"


@dataclass
class BranchedRoot:
    """a -(config_change@5)-> b, back to a at 8, a -(config_change@10)-> c -(model_change@14)-> d."""

    path: Path
    a: str
    b: str
    c: str
    d: str


def build_branched_root(path: Path) -> BranchedRoot:
    torch.manual_seed(0)
    ledger = Ledger()
    config = {"lr": 0.1}
    ledger.register_hyperparams("config", config)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"])
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", opt)
    system = AutomaticCheckpointSystem(
        CheckpointConfig(root_log_dir=path, checkpoint_frequency=2, async_save=False, durable=False),
        ledger=ledger,
    )

    def train(start: int, stop: int) -> None:
        for step in range(start, stop):
            x = torch.randn(16, 4)
            loss = (model(x) - x[:, :2]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            system.checkpoint_on_step(step, {"train/loss": loss.item()})

    def set_lr(lr: float, step: int) -> None:
        config["lr"] = lr
        for group in opt.param_groups:
            group["lr"] = lr
        system.checkpoint_on_config_change(step)

    train(0, 5)
    a = system.exp_hash
    set_lr(0.05, 5)
    b = system.exp_hash
    train(5, 8)
    set_lr(0.1, 8)  # undone: the run returns to a
    assert system.exp_hash == a
    train(8, 10)
    set_lr(0.2, 10)
    c = system.exp_hash
    train(10, 14)
    model.append(torch.nn.Linear(2, 2))
    ledger.register_model("model", model)
    system.checkpoint_on_model_change(step=14)
    d = system.exp_hash
    train(14, 18)
    system.close()
    assert a and b and c and d and len({a, b, c, d}) == 4
    return BranchedRoot(path, a, b, c, d)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> BranchedRoot:
    return build_branched_root(tmp_path_factory.mktemp("lineage_graph") / "root")


@pytest.fixture(scope="module")
def forest(root: BranchedRoot) -> list[LineageNode]:
    return lineage(open_root(root.path))


# -- checks shared by the real and the synthetic forests -------------------------------------------------
def overlaps(p: GraphNode, q: GraphNode) -> bool:
    return p.x < q.x + q.width and q.x < p.x + p.width and p.y < q.y + q.height and q.y < p.y + p.height


def walk(roots: list[LineageNode]) -> list[LineageNode]:
    found, stack = [], list(reversed(roots))
    while stack:
        node = stack.pop()
        found.append(node)
        stack.extend(reversed(node.children))
    return found


def assert_tidy(graph: LineageGraph, roots: list[LineageNode]) -> None:
    """Inside the canvas, no overlaps, children right of parents, parents centred, rows kept apart."""
    by_hash = {n.exp_hash: n for n in graph.nodes}
    assert len(by_hash) == len(graph.nodes) == len(walk(roots))
    for n in graph.nodes:
        assert n.x >= 0 and n.x + n.width <= graph.width and n.y >= 0 and n.y + n.height <= graph.height
    # no two boxes overlap: sorting by (x, y) and checking neighbours of a column is enough, but the
    # forests here are small enough to check every pair
    for i, p in enumerate(graph.nodes):
        for q in graph.nodes[i + 1 :]:
            assert not overlaps(p, q), (p, q)
    for node in walk(roots):
        parent = by_hash[node.info.exp_hash]
        kids = [by_hash[c.info.exp_hash] for c in node.children]
        for kid in kids:
            assert kid.x > parent.x + parent.width and kid.depth == parent.depth + 1
        if kids:
            assert parent.y == pytest.approx((kids[0].y + kids[-1].y) / 2)
            assert [k.y for k in kids] == sorted(k.y for k in kids)  # siblings top to bottom, oldest first
    for root in roots:
        assert by_hash[root.info.exp_hash].depth == 0
    # trees of a forest are stacked: each tree's rows lie wholly below the previous tree's
    spans = []
    for root in roots:
        ys = [by_hash[n.info.exp_hash].y for n in walk([root])]
        spans.append((min(ys), max(ys)))
    for (_, low_end), (high_start, _) in pairwise(spans):
        assert high_start > low_end


def label_box(edge_label: ET.Element) -> tuple[float, float, float, float]:
    """The estimated box of a right-aligned branch label: (left, top, right, bottom)."""
    x, y = float(edge_label.get("x", "0")), float(edge_label.get("y", "0"))
    return x - len(edge_label.text or "") * CHAR_WIDTH, y - 12, x, y + 3


def parse(svg: str) -> ET.Element:
    element = ET.fromstring(svg)  # well-formed XML, or this raises
    assert element.tag == f"{SVG}svg"
    return element


def groups(svg: ET.Element, cls: str) -> list[ET.Element]:
    return [g for g in svg.iter(f"{SVG}g") if cls in (g.get("class") or "").split()]


# -- a real root ------------------------------------------------------------------------------------------
def test_layout_of_a_real_root_is_a_tidy_tree(root: BranchedRoot, forest: list[LineageNode]) -> None:
    graph = layout_lineage(forest)
    assert_tidy(graph, forest)
    by_hash = {n.exp_hash: n for n in graph.nodes}
    assert [n.exp_hash for n in graph.nodes] == [root.a, root.b, root.c, root.d]  # depth first, oldest first
    a, b, c, d = (by_hash[h] for h in (root.a, root.b, root.c, root.d))
    assert a.depth == 0 and b.depth == c.depth == 1 and d.depth == 2
    assert b.y < c.y and a.y == pytest.approx((b.y + c.y) / 2) and d.y == c.y  # an only child stays level
    assert d.active and not a.active and a.label == root.a[:8]
    manager = open_root(root.path)
    for node in (a, b, c, d):
        m = manager.manifest(node.exp_hash)
        latest = m.latest()
        assert latest is not None
        assert node.subtitle == f"{len(m.checkpoints)} ckpts · latest {latest.step}"
        assert node.tooltip.splitlines()[0] == node.exp_hash

    edges = {(e.kind, e.source, e.target): e for e in graph.edges}
    assert set(edges) == {
        ("branch", root.a, root.b),
        ("branch", root.a, root.c),
        ("branch", root.c, root.d),
        ("return", root.b, root.a),
    }
    assert edges["branch", root.a, root.b].label == "config_change @ 5"
    assert edges["branch", root.a, root.c].label == "config_change @ 10"
    assert (edges["branch", root.c, root.d].step, edges["branch", root.c, root.d].reason) == (
        14,
        "model_change",
    )
    back = edges["return", root.b, root.a]
    assert (back.step, back.reason, back.label) == (8, "config_change", "config_change @ 8")
    assert "(returned from): config_change at step 8" in back.tooltip

    data = json.loads(json.dumps(graph.to_dict()))  # JSON-ready as it is
    assert [n["exp_hash"] for n in data["nodes"]] == [root.a, root.b, root.c, root.d]
    assert {e["kind"] for e in data["edges"]} == {"branch", "return"} and data["width"] == graph.width


def test_svg_of_a_real_root(root: BranchedRoot, forest: list[LineageNode]) -> None:
    graph = layout_lineage(forest)
    svg = parse(render_svg(graph, href=lambda h: f"/exp/{h}?root=runs&x=1"))
    assert svg.get("role") == "img" and svg.get("aria-label") == "Experiment lineage"
    assert svg.get("viewBox") == f"0 0 {svg.get('width')} {svg.get('height')}"
    assert float(svg.get("width") or 0) == pytest.approx(graph.width, abs=0.1)

    nodes = groups(svg, "node")
    assert [g.get("data-exp") for g in nodes] == [root.a, root.b, root.c, root.d]
    for g in nodes:
        (link,) = g.findall(f"{SVG}a")
        assert link.get("href") == f"/exp/{g.get('data-exp')}?root=runs&x=1"  # & was escaped, parses back
        title = link.find(f"{SVG}title")
        assert title is not None and (title.text or "").splitlines()[0] == g.get("data-exp")
        assert link.find(f"{SVG}rect") is not None
        (label,) = [t for t in link.iter(f"{SVG}text") if t.get("class") == "node-label"]
        (sub,) = [t for t in link.iter(f"{SVG}text") if t.get("class") == "node-sub"]
        assert label.text == (g.get("data-exp") or "")[:8] and "ckpts · latest" in (sub.text or "")
    assert [g.get("class") for g in nodes if "active" in (g.get("class") or "")] == ["node active"]

    edges = groups(svg, "edge")
    assert sorted((g.get("class"), g.get("data-from"), g.get("data-to")) for g in edges) == sorted(
        [
            ("edge branch", root.a, root.b),
            ("edge branch", root.a, root.c),
            ("edge branch", root.c, root.d),
            ("edge return", root.b, root.a),
        ]
    )
    for g in edges:
        path = g.find(f"{SVG}path")
        assert (
            path is not None
            and " C" in (path.get("d") or "")
            and path.get("marker-end") == "url(#lineage-arrow)"
        )
        assert "stroke" not in path.attrib and "style" not in path.attrib  # the page's CSS styles it
        text = g.find(f"{SVG}text")
        assert text is not None and text.get("class") == "edge-label" and " @ " in (text.text or "")
    markers = list(svg.iter(f"{SVG}marker"))
    assert [m.get("id") for m in markers] == ["lineage-arrow"]
    for element in svg.iter():
        assert not {"style", "fill", "font-family", "font-size"} & set(element.attrib), element.tag


def test_the_default_link_is_relative(forest: list[LineageNode], root: BranchedRoot) -> None:
    svg = parse(render_svg(layout_lineage(forest)))
    hrefs = [a.get("href") for a in svg.iter(f"{SVG}a")]
    assert hrefs == [f"exp/{h}" for h in (root.a, root.b, root.c, root.d)]


# -- records built by hand: escaping, states, edges out of the graph -----------------------------------------
def info(
    exp_hash: str, parent: str | None = None, step: int | None = None, reason: str = "", **kw: object
) -> ExperimentInfo:
    ref = None if parent is None else ParentRef(parent, step, reason)
    fields: dict = {"checkpoints": 3, "latest_step": 40, **kw}
    return ExperimentInfo(exp_hash=exp_hash, parent=ref, **fields)


def test_text_is_escaped_and_long_reasons_are_cut() -> None:
    reason = 'edited <model> & "optimizer" by hand, then the learning rate schedule too'
    top = LineageNode(info("a" * 32, active=True))
    child = LineageNode(info("b" * 32, "a" * 32, 100, reason, abandoned=2))
    broken = LineageNode(
        info("c" * 32, checkpoints=0, latest_step=None, error='manifest.json: bad <json> & "x"')
    )
    top.children.append(child)
    graph = layout_lineage([top, broken])
    (edge,) = graph.edges
    assert edge.reason == reason and len(edge.label) <= REASON_CHARS + len(" @ 100")
    assert edge.label.endswith("… @ 100") and edge.label.startswith("edited <model> &")
    text = render_svg(graph, href=lambda h: f'/exp/{h}?q="<&>"')
    assert "<model>" not in text and "&lt;model&gt;" in text and "&quot;optimizer&quot;" in text
    svg = parse(text)
    (g,) = groups(svg, "edge")
    title = g.find(f"{SVG}title")
    assert title is not None and reason in (title.text or "") and "at step 100" in (title.text or "")
    label = g.find(f"{SVG}text")
    assert label is not None and label.text == edge.label
    assert next(a.get("href") for a in svg.iter(f"{SVG}a")) == f'/exp/{"a" * 32}?q="<&>"'
    classes = {g.get("data-exp"): g.get("class") for g in groups(svg, "node")}
    assert classes == {"a" * 32: "node active", "b" * 32: "node abandoned", "c" * 32: "node unreadable"}
    by_hash = {n.exp_hash: n for n in graph.nodes}
    assert by_hash["c" * 32].subtitle == "unreadable manifest"
    assert "2 abandoned checkpoints" in by_hash["b" * 32].tooltip


def test_characters_xml_cannot_hold_are_replaced() -> None:
    top = LineageNode(info("a" * 32))
    top.children.append(LineageNode(info("b" * 32, "a" * 32, 3, "bad\x00reason\x1b\nnext line")))
    svg = parse(render_svg(layout_lineage([top])))
    (g,) = groups(svg, "edge")
    label = g.find(f"{SVG}text")
    assert label is not None and label.text == "bad\ufffdreason\ufffd next line @ 3"


def test_returns_are_drawn_only_between_experiments_in_the_graph() -> None:
    a, b = LineageNode(info("a" * 32)), LineageNode(info("b" * 32, "a" * 32, 5, "config_change"))
    a.children.append(b)
    a.returns += [
        Return("b" * 32, 8, "config_change"),
        Return("b" * 32, 12, "config_change"),
        Return("f" * 32, 9, "config_change"),  # from an experiment since deleted
        Return("a" * 32, 10, "config_change"),  # to itself: nothing to draw
    ]
    graph = layout_lineage([a])
    returns = [e for e in graph.edges if e.kind == "return"]
    assert [(e.source, e.target, e.steps, e.label) for e in returns] == [
        ("b" * 32, "a" * 32, (8, 12), "config_change @ 8, 12")
    ]
    assert "at steps 8, 12" in returns[0].tooltip
    svg = parse(render_svg(graph))
    assert len(groups(svg, "return")) == 1
    # the arc and its label stay on the canvas, above the first row
    label = groups(svg, "return")[0].find(f"{SVG}text")
    assert label is not None and 0 < float(label.get("y") or 0) < min(n.y for n in graph.nodes)


def test_an_empty_forest() -> None:
    graph = layout_lineage([])
    assert graph.nodes == [] and graph.edges == [] and graph.to_dict()["nodes"] == []
    svg = parse(render_svg(graph))
    assert [t.text for t in svg.iter(f"{SVG}text")] == ["no experiments yet"]
    assert svg.get("role") == "img" and svg.get("viewBox")


def test_an_experiment_met_twice_is_drawn_once() -> None:
    a, b = LineageNode(info("a" * 32)), LineageNode(info("b" * 32, "a" * 32, 1, "config_change"))
    a.children.append(b)
    graph = layout_lineage([a, b])  # b is also given as a root of its own
    assert [n.exp_hash for n in graph.nodes] == ["a" * 32, "b" * 32] and len(graph.edges) == 1


# -- large forests ------------------------------------------------------------------------------------------
def synthetic_forest(count: int, seed: int) -> list[LineageNode]:
    """``count`` experiments in a few trees of random shape, with long reasons and some returns."""
    rng = random.Random(seed)
    nodes: list[LineageNode] = []
    roots: list[LineageNode] = []
    reasons = ["config_change", "model_change", "a much longer reason that the label has to cut short"]
    for i in range(count):
        exp_hash = f"{i:08x}" + f"{rng.getrandbits(96):024x}"
        if not nodes or rng.random() < 0.06:
            node = LineageNode(
                info(exp_hash, checkpoints=rng.randint(0, 12000), latest_step=rng.randint(0, 10**6))
            )
            roots.append(node)
        else:
            parent = nodes[rng.randrange(max(0, len(nodes) - 10), len(nodes))]  # mostly recent: deep trees
            node = LineageNode(
                info(
                    exp_hash,
                    parent.info.exp_hash,
                    rng.randint(0, 10**6),
                    rng.choice(reasons),
                    active=i == count - 1,
                )
            )
            parent.children.append(node)
            if rng.random() < 0.1:
                parent.returns.append(Return(exp_hash, rng.randint(0, 10**6), "config_change"))
        nodes.append(node)
    return roots


def test_a_forest_of_150_experiments_lays_out_without_overlap() -> None:
    roots = synthetic_forest(150, seed=16)
    assert len(roots) > 3
    graph = layout_lineage(roots)
    assert_tidy(graph, roots)
    assert layout_lineage(roots) == graph  # deterministic
    assert sum(e.kind == "branch" for e in graph.edges) == 150 - len(roots)
    assert any(e.kind == "return" for e in graph.edges)

    svg = parse(render_svg(graph))
    assert len(groups(svg, "node")) == 150 and len(groups(svg, "edge")) == len(graph.edges)
    # a branch label sits before its child, clear of every box (long reasons are cut to fit)
    rects = [(n.x, n.y, n.x + n.width, n.y + n.height) for n in graph.nodes]
    by_hash = {n.exp_hash: n for n in graph.nodes}
    for g in groups(svg, "branch"):
        text = g.find(f"{SVG}text")
        assert text is not None and len(text.text or "") <= REASON_CHARS + len(" @ 1000000")
        source, target = by_hash[g.get("data-from") or ""], by_hash[g.get("data-to") or ""]
        end = target.y + target.height / 2
        # on the side the curve does not come from, so it does not cross its own edge
        assert (float(text.get("y") or 0) > end) == (target.y > source.y)
        left, top, right, bottom = label_box(text)
        for x0, y0, x1, y1 in rects:
            assert right <= x0 or left >= x1 or bottom <= y0 or top >= y1, (text.text, (x0, y0))


def test_a_chain_of_thousands_of_changes_is_laid_out_iteratively() -> None:
    # deeper than Python's recursion limit: the layout must not recurse
    chain = [
        LineageNode(info(f"{i:032x}", None if i == 0 else f"{i - 1:032x}", i, "config_change"))
        for i in range(3000)
    ]
    for parent, child in pairwise(chain):
        parent.children.append(child)
    graph = layout_lineage(chain[:1])
    assert len(graph.nodes) == 3000 and {n.y for n in graph.nodes} == {graph.nodes[0].y}
    assert [n.depth for n in graph.nodes] == list(range(3000))
    assert len(groups(parse(render_svg(graph)), "node")) == 3000


def test_a_return_between_siblings_bows_out_beside_their_column() -> None:
    a = LineageNode(info("a" * 32))
    b = LineageNode(info("b" * 32, "a" * 32, 5, "config_change"))
    c = LineageNode(info("c" * 32, "a" * 32, 9, "config_change"))
    a.children += [b, c]
    b.returns.append(Return("c" * 32, 12, "config_change"))  # c's config was set back to b's
    graph = layout_lineage([a])
    assert_tidy(graph, [a])
    svg = parse(render_svg(graph))
    (g,) = groups(svg, "return")
    assert (g.get("data-from"), g.get("data-to")) == ("c" * 32, "b" * 32)
    node_b = next(n for n in graph.nodes if n.exp_hash == "b" * 32)
    label = g.find(f"{SVG}text")
    assert label is not None and label.text == "config_change @ 12"
    assert float(label.get("x") or 0) > node_b.x + node_b.width  # beside the column, not across its boxes
    # the siblings are the last column: the canvas widens to hold the label
    assert float(label.get("x") or 0) + len(label.text) * CHAR_WIDTH <= graph.width
