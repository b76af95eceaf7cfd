"""The lineage forest as a graph: a tidy left-to-right layout and its rendering as inline SVG.

Pure: it takes the forest :func:`weightslab.inspect.lineage.lineage` returns and computes
coordinates and markup, with no I/O and no web framework. Colours and fonts are left to the page's
CSS, which styles the classes the SVG carries (``.node rect``, ``.node.active rect``, ``.edge path``,
``.edge.return path``, ``.edge-label``, ...).

Layout: an experiment's depth in its tree is its column, each subtree gets contiguous rows, a parent
sits centred on the rows of its first and last child, and the trees of a forest are stacked one below
the other. Every step is linear in the number of experiments and edges.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from weightslab.inspect.experiments import ExperimentInfo
from weightslab.inspect.lineage import LineageNode

EdgeKind = Literal["branch", "return"]

SHORT_HASH = 8  # as the console's tree prints them
REASON_CHARS = 28  # longer reasons are cut in the label; the full text is in the edge's <title>
STEPS_SHOWN = 3  # a return made more often lists its first steps and counts the rest

# Geometry, in CSS pixels. Widths estimate text at the 11-12 px the page's CSS is expected to use.
CHAR_WIDTH = 6.8
NODE_HEIGHT = 42.0
NODE_MIN_WIDTH = 140.0
NODE_MAX_WIDTH = 260.0
ROW_GAP = 36.0  # room between rows for the arc and label of a return edge
COLUMN_MIN_GAP = 72.0
COLUMN_MAX_GAP = 300.0
MARGIN = 16.0
RETURN_BULGE = 16.0  # how far a return arc rises above the nodes it joins
RETURN_BULGE_STEP = 10.0  # a second return between the same pair arcs higher, so labels do not meet
RETURN_TOP_ROOM = 40.0  # above the first row: the highest arc and its label

_SVG_NS = "http://www.w3.org/2000/svg"
_ARROW_ID = "lineage-arrow"
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class GraphNode:
    """One experiment placed on the canvas; ``x``/``y`` is the top-left corner of its box.

    ``abandoned`` counts checkpoints of a future the run went back from (0 when none);
    ``unreadable`` marks an experiment whose manifest could not be read.
    """

    exp_hash: str
    x: float
    y: float
    width: float
    height: float
    label: str
    subtitle: str
    active: bool = False
    abandoned: int = 0
    unreadable: bool = False
    depth: int = 0
    tooltip: str = ""

    @property
    def classes(self) -> str:
        """The SVG classes of the node's group: ``node`` plus its states."""
        states = (("active", self.active), ("abandoned", self.abandoned), ("unreadable", self.unreadable))
        return " ".join(["node", *(name for name, on in states if on)])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GraphEdge:
    """A branch (``source`` is the parent of ``target``) or a return (the run came back to ``target``).

    ``step`` is the first step the edge stands for; ``steps`` lists all of them (a run can return to
    the same experiment from the same one several times, drawn as one edge).
    """

    source: str
    target: str
    step: int | None
    reason: str
    kind: EdgeKind
    label: str
    steps: tuple[int | None, ...] = ()
    tooltip: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = list(self.steps)
        return d


@dataclass(frozen=True)
class LineageGraph:
    """The laid-out lineage: nodes in tree order, branch edges then return edges, and the canvas size."""

    nodes: list[GraphNode] = field(default_factory=list)
    edges: list[GraphEdge] = field(default_factory=list)
    width: float = 0.0
    height: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``{"nodes": [...], "edges": [...], "width": ..., "height": ...}``."""
        return {
            "nodes": [n.to_dict() for n in self.nodes],
            "edges": [e.to_dict() for e in self.edges],
            "width": self.width,
            "height": self.height,
        }


# -- layout -------------------------------------------------------------------------------------------
@dataclass
class _Placed:
    node: LineageNode
    depth: int
    parent: int | None  # index of the parent in the placement order
    children: list[int] = field(default_factory=list)
    row: float = 0.0


def layout_lineage(roots: Sequence[LineageNode]) -> LineageGraph:
    """Lay the lineage forest out left to right: depth is the column, a parent centred on its children.

    ``roots`` is what :func:`~weightslab.inspect.lineage.lineage` returns, in its order (oldest
    first), which the layout keeps, so the same root always draws the same picture. An experiment
    met a second time (only a hand-built forest can hold one twice) is drawn once, where it is met
    first. Return edges are drawn only when both experiments are in the forest.
    """
    placed = _place(roots)
    if not placed:
        return LineageGraph(width=2 * MARGIN, height=2 * MARGIN)
    branches = []
    for p in placed:
        if p.parent is not None:  # a hand-built child may lack the record of where it branched
            ref, source = p.node.info.parent, placed[p.parent].node.info.exp_hash
            steps = [None if ref is None else ref.step]
            branches.append(_edge("branch", source, p.node.info.exp_hash, ref.reason if ref else "", steps))
    returns = _return_edges([p.node for p in placed])

    node_width = _clamp(
        max(len(_subtitle(p.node.info)) for p in placed) * CHAR_WIDTH + 24, NODE_MIN_WIDTH, NODE_MAX_WIDTH
    )
    longest = max((len(e.label) for e in branches), default=0)
    column_gap = _clamp(longest * CHAR_WIDTH + 36, COLUMN_MIN_GAP, COLUMN_MAX_GAP)
    top = MARGIN + (RETURN_TOP_ROOM + _bulge(max(_repeats(returns))) - RETURN_BULGE if returns else 0.0)
    pitch = NODE_HEIGHT + ROW_GAP

    nodes = [
        GraphNode(
            exp_hash=p.node.info.exp_hash,
            x=MARGIN + p.depth * (node_width + column_gap),
            y=top + p.row * pitch,
            width=node_width,
            height=NODE_HEIGHT,
            label=p.node.info.exp_hash[:SHORT_HASH],
            subtitle=_subtitle(p.node.info),
            active=p.node.info.active,
            abandoned=p.node.info.abandoned,
            unreadable=p.node.info.error is not None,
            depth=p.depth,
            tooltip=_node_tooltip(p.node.info),
        )
        for p in placed
    ]
    rows = max(p.row for p in placed) + 1
    columns = max(p.depth for p in placed) + 1
    depth = {p.node.info.exp_hash: p.depth for p in placed}
    # a return within the last column bows out to its right, with its label: make room for both
    beside = [len(e.label) for e in returns if depth[e.source] == depth[e.target] == columns - 1]
    extra = max((_bulge(2) + 4 + n * CHAR_WIDTH for n in beside), default=0.0)
    width = 2 * MARGIN + columns * node_width + (columns - 1) * column_gap + extra
    height = top + MARGIN + rows * pitch - ROW_GAP
    return LineageGraph(nodes, branches + returns, width, height)


def _place(roots: Sequence[LineageNode]) -> list[_Placed]:
    """The forest in depth-first order with depths and rows; iterative, so a chain of any length fits.

    Leaves take consecutive rows in depth-first order; a parent takes the midpoint of its first and
    last child's rows. Two nodes of one column are then at least a row apart, because the rows of
    their subtrees do not interleave.
    """
    seen: set[str] = set()
    placed: list[_Placed] = []
    stack: list[tuple[LineageNode, int, int | None]] = [(r, 0, None) for r in reversed(roots)]
    while stack:
        node, depth, parent = stack.pop()
        if node.info.exp_hash in seen:
            continue
        seen.add(node.info.exp_hash)
        index = len(placed)
        placed.append(_Placed(node, depth, parent))
        if parent is not None:
            placed[parent].children.append(index)
        stack.extend((c, depth + 1, index) for c in reversed(node.children))
    for row, leaf in enumerate(p for p in placed if not p.children):
        leaf.row = float(row)
    # a child always comes after its parent, so walking backwards settles children before parents
    for p in reversed(placed):
        if p.children:
            p.row = (placed[p.children[0]].row + placed[p.children[-1]].row) / 2
    return placed


def _return_edges(nodes: Sequence[LineageNode]) -> list[GraphEdge]:
    """One edge per (previous, experiment, reason), in the order the returns were recorded."""
    present = {n.info.exp_hash for n in nodes}
    grouped: dict[tuple[str, str, str], list[int | None]] = {}
    for node in nodes:
        target = node.info.exp_hash
        for r in node.returns:
            if r.previous in present and r.previous != target:
                grouped.setdefault((r.previous, target, r.reason), []).append(r.step)
    return [_edge("return", *key, steps) for key, steps in grouped.items()]


def _edge(kind: EdgeKind, source: str, target: str, reason: str, steps: list[int | None]) -> GraphEdge:
    shown = ", ".join("?" if s is None else str(s) for s in steps)
    at = "" if steps == [None] else f" at step{'s' if len(steps) > 1 else ''} {shown}"
    verb = "branched" if kind == "branch" else "returned from"
    tooltip = f"{source[:SHORT_HASH]} -> {target[:SHORT_HASH]} ({verb}): {reason or kind}{at}"
    label = _edge_label(reason or kind, steps)
    return GraphEdge(source, target, steps[0], reason, kind, label, tuple(steps), tooltip)


# -- text -----------------------------------------------------------------------------------------------
def _subtitle(info: ExperimentInfo) -> str:
    """``4 ckpts · latest 399``: what fits under the hash in a node's box."""
    if info.error is not None:
        return "unreadable manifest"
    if not info.checkpoints:
        return "no checkpoints"
    count = f"{info.checkpoints} ckpt" + ("" if info.checkpoints == 1 else "s")
    return count if info.latest_step is None else f"{count} · latest {info.latest_step}"


def _node_tooltip(info: ExperimentInfo) -> str:
    """The full hash, then what the box has no room for (one fact a line)."""
    lines = [info.exp_hash]
    if info.error is not None:
        lines.append(f"unreadable manifest: {info.error}")
    if info.parent is not None:
        at = "" if info.parent.step is None else f" at step {info.parent.step}"
        lines.append(f"branched from {info.parent.exp_hash[:SHORT_HASH]}{at} ({info.parent.reason})")
    if info.error is None:
        lines.append(_subtitle(info))
    if info.best is not None:
        lines.append(f"best {info.best.monitor} {info.best.value:.6g} at step {info.best.step}")
    if info.abandoned:
        lines.append(f"{info.abandoned} abandoned checkpoint" + ("" if info.abandoned == 1 else "s"))
    if info.active:
        lines.append("active")
    return "\n".join(lines)


def _edge_label(reason: str, steps: Sequence[int | None]) -> str:
    """``config_change @ 100``; a long reason is cut, and a return made often counts its steps."""
    text = _SPACES.sub(" ", reason).strip()
    if len(text) > REASON_CHARS:
        text = text[: REASON_CHARS - 1].rstrip() + "…"
    known = [s for s in steps if s is not None]
    if not known:
        return text
    shown = ", ".join(str(s) for s in known[:STEPS_SHOWN])
    more = len(known) - STEPS_SHOWN
    return f"{text} @ {shown}" + (f" (+{more})" if more > 0 else "")


def _esc(text: str) -> str:
    """Text safe in XML content and attributes: escaped, with characters XML cannot hold replaced."""
    return html.escape(_NOT_XML.sub("\ufffd", text), quote=True)


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def _bulge(repeat: int) -> float:
    """How high the ``repeat``-th return arc between one pair of experiments rises (0 is the first)."""
    return RETURN_BULGE + min(repeat, 2) * RETURN_BULGE_STEP


def _repeats(edges: Sequence[GraphEdge]) -> Iterator[int]:
    """For each edge, how many return edges before it join the same two experiments (either way)."""
    counts: dict[frozenset[str], int] = {}
    for e in edges:
        if e.kind != "return":
            yield 0
            continue
        pair = frozenset((e.source, e.target))
        yield counts.get(pair, 0)
        counts[pair] = counts.get(pair, 0) + 1


# -- SVG ------------------------------------------------------------------------------------------------
def render_svg(graph: LineageGraph, *, href: Callable[[str], str] = lambda h: f"exp/{h}") -> str:
    """The graph as one inline ``<svg>`` element; ``href`` maps a full experiment hash to its link.

    Nodes are ``<g class="node">`` groups (plus ``active``, ``abandoned``, ``unreadable``) holding a
    link with a box, two texts and a ``<title>``; edges are ``<g class="edge branch">`` or ``<g
    class="edge return">`` groups with a cubic path, a label and a ``<title>``. Styling is left to
    the page's CSS; every text is escaped. An empty graph renders a small SVG saying so.
    """
    head = f'<svg xmlns="{_SVG_NS}" role="img" aria-label="Experiment lineage" class="lineage"'
    if not graph.nodes:
        return (
            f'{head} viewBox="0 0 240 48" width="240" height="48">'
            '<text class="empty" x="16" y="28">no experiments yet</text></svg>'
        )
    w, h = _n(graph.width), _n(graph.height)
    parts = [
        f'{head} viewBox="0 0 {w} {h}" width="{w}" height="{h}">',
        f'<defs><marker id="{_ARROW_ID}" class="edge-arrow" viewBox="0 0 10 10" refX="9" refY="5"'
        ' markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>',
        '<g class="edges">',
    ]
    by_hash = {n.exp_hash: n for n in graph.nodes}
    for edge, repeat in zip(graph.edges, _repeats(graph.edges), strict=True):
        source, target = by_hash.get(edge.source), by_hash.get(edge.target)
        if source is not None and target is not None:
            parts.append(_edge_svg(edge, source, target, repeat))
    parts.append('</g><g class="nodes">')
    parts.extend(_node_svg(node, href(node.exp_hash)) for node in graph.nodes)
    parts.append("</g></svg>")
    return "".join(parts)


def _node_svg(node: GraphNode, link: str) -> str:
    x, y = node.x, node.y
    return (
        f'<g class="{node.classes}" data-exp="{_esc(node.exp_hash)}">'
        f'<a href="{_esc(link)}"><title>{_esc(node.tooltip or node.exp_hash)}</title>'
        f'<rect x="{_n(x)}" y="{_n(y)}" width="{_n(node.width)}" height="{_n(node.height)}" rx="6" ry="6"/>'
        f'<text class="node-label" x="{_n(x + 10)}" y="{_n(y + 18)}">{_esc(node.label)}</text>'
        f'<text class="node-sub" x="{_n(x + 10)}" y="{_n(y + 33)}">{_esc(node.subtitle)}</text>'
        "</a></g>"
    )


def _edge_svg(edge: GraphEdge, source: GraphNode, target: GraphNode, repeat: int) -> str:
    if edge.kind == "branch":
        path, lx, ly, anchor = _branch_geometry(source, target)
    else:
        path, lx, ly, anchor = _return_geometry(source, target, _bulge(repeat))
    return (
        f'<g class="edge {edge.kind}" data-from="{_esc(edge.source)}" data-to="{_esc(edge.target)}">'
        f"<title>{_esc(edge.tooltip or edge.label)}</title>"
        f'<path d="{path}" marker-end="url(#{_ARROW_ID})"/>'
        f'<text class="edge-label" x="{_n(lx)}" y="{_n(ly)}" text-anchor="{anchor}">{_esc(edge.label)}</text>'
        "</g>"
    )


def _branch_geometry(source: GraphNode, target: GraphNode) -> tuple[str, float, float, str]:
    """Parent's right side to child's left side, leaving and arriving level; label just before the child.

    The label goes on the side of the path its curve does not come from: below it for a child lower
    than its parent, above it otherwise.
    """
    x0, y0 = source.x + source.width, source.y + source.height / 2
    x1, y1 = target.x - 2, target.y + target.height / 2
    mid = (x0 + x1) / 2
    path = f"M{_n(x0)},{_n(y0)} C{_n(mid)},{_n(y0)} {_n(mid)},{_n(y1)} {_n(x1)},{_n(y1)}"
    return path, target.x - 10, y1 + 15 if y1 > y0 else y1 - 6, "end"


def _return_geometry(source: GraphNode, target: GraphNode, bulge: float) -> tuple[str, float, float, str]:
    """An arc over the tops of two columns, or, within one column, a bow out to the right."""
    if source.depth == target.depth:
        x0, y0 = source.x + source.width, source.y + source.height / 2
        x1, y1 = target.x + target.width + 2, target.y + target.height / 2
        c = x0 + bulge * 4 / 3
        path = f"M{_n(x0)},{_n(y0)} C{_n(c)},{_n(y0)} {_n(c)},{_n(y1)} {_n(x1)},{_n(y1)}"
        return path, x0 + bulge + 4, (y0 + y1) / 2 + 4, "start"
    x0, y0 = source.x + source.width / 2, source.y
    x1, y1 = target.x + target.width / 2, target.y - 2
    c = min(y0, y1) - bulge * 4 / 3
    path = f"M{_n(x0)},{_n(y0)} C{_n(x0)},{_n(c)} {_n(x1)},{_n(c)} {_n(x1)},{_n(y1)}"
    # a cubic's point at t = 1/2, with both control points at height c
    return path, (x0 + x1) / 2, (y0 + y1) / 8 + 0.75 * c - 4, "middle"


def _n(value: float) -> str:
    """A coordinate with at most one decimal, and none when it is whole."""
    return f"{value:.1f}".removesuffix(".0")


__all__ = ["EdgeKind", "GraphEdge", "GraphNode", "LineageGraph", "layout_lineage", "render_svg"]
