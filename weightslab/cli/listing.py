"""``weightslab ls`` from the experiments' summaries: a root of 10,000 checkpoints in milliseconds.

The command's full path (:func:`weightslab.cli.tables.print_summary`) opens the root through the
storage layer and parses every manifest: 2.6 MB of JSON at 10,000 checkpoints, and the imports of
the storage layer, the manager and rich before the first line. Here, on a local root whose every
experiment has a current summary (:mod:`weightslab.format.summary`, kept by the writer), the rows
come from those small files, the sizes from listing the folders (step files count the bytes their
entries record, as the full path counts them), and the active experiment from the end of the
journal. The table is written as plain text when the output carries no style (a pipe, a file) and
every cell is plain ASCII that fits; otherwise rich draws it from the same rows.

Anything this path does not know as the full path does (an object-store root, a missing or stale
summary, a step file more or fewer than recorded, a replacement under way, a symlink, ``--monitor``
other than the recorded one) gives None, and the caller takes the full path: the output is the same
either way, only slower.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
import time
from pathlib import Path
from typing import IO, Any

from weightslab.cli.formats import (
    EXPERIMENT_COLUMNS,
    PIPE_WIDTH,
    format_size,
    format_time,
    format_value,
    parent_cell,
    plural,
)
from weightslab.format.activations import newest_activation
from weightslab.format.summary import SUMMARY_NAME, current, retention_monitor
from weightslab.storage.stamps import stamps
from weightslab.util.names import is_hash

JOURNAL_TAIL = 1 << 16  # bytes read from the end of the journal first (its last event is there)
_STYLE_ENV = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "JUPYTER_COLUMNS")
RULE = "─"
_EMOJI_CODE = re.compile(r":\S*?:")  # what rich may read as an emoji code (":smile:")


def rows(root_arg: str, monitor: str | None, mode: str | None) -> tuple[Path, list[dict[str, Any]]] | None:
    """The root and its experiments as ``ExperimentInfo.to_dict()`` gives them, oldest first; None
    when the full path must answer (see the module's docstring)."""
    if root_arg.startswith("s3://"):
        return None
    root = Path(root_arg).expanduser().absolute()
    checkpoints = os.path.join(root, "checkpoints")
    try:
        names = sorted(os.listdir(checkpoints))
    except OSError:
        return None  # not a root, or not readable: the full path says which
    found = []
    for name in names:
        if not is_hash(name):
            continue
        folder = os.path.join(checkpoints, name)
        if not os.path.exists(os.path.join(folder, "manifest.json")):
            continue
        record = read_current(folder, name)
        if record is None or record.get("unusual"):
            return None
        info = _info(record, monitor, mode)
        size = _size(folder, name, record)
        if info is None or size is None:
            return None
        info["size_bytes"] = size
        found.append(info)
    found.sort(key=lambda i: (i["created"], i["exp_hash"]))
    try:
        active = _last_active(os.path.join(root, "logs", "events.jsonl"))
    except OSError:
        return None  # a journal that cannot be read: the full path reports it
    if active is not None and not is_hash(active):
        return None  # the full path reports a journal naming something that is not a hash
    if active is not None and not os.path.exists(os.path.join(checkpoints, active, "manifest.json")):
        active = None
    if active is None and found:
        active = found[-1]["exp_hash"]
    for i in found:
        i["active"] = i["exp_hash"] == active
    return root, found


def read_current(folder: str, exp_hash: str) -> dict[str, Any] | None:
    """The summary in ``folder`` if it describes the manifest files as they are now, else None."""
    try:
        with open(os.path.join(folder, SUMMARY_NAME), "rb") as f:
            data = f.read()
    except OSError:
        return None
    return current(data, exp_hash, lambda names: stamps(folder, names))


def _info(record: dict[str, Any], monitor: str | None, mode: str | None) -> dict[str, Any] | None:
    """One experiment's row from its summary; None when ``monitor``/``mode`` ask another ranking."""
    retention = record["retention"]
    recorded = retention_monitor(retention)
    wanted = monitor or recorded[0]
    chosen = mode or recorded[1]
    if wanted is not None and (wanted, chosen) != recorded:
        return None  # another ranking than the one the summary keeps
    created = record["created"]
    return {
        "exp_hash": record["exp_hash"],
        "parent": record["parent"],
        "created": created,
        "created_iso": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(created)),
        "checkpoints": record["checkpoints"],
        "abandoned": record["abandoned"],
        "latest_step": record["latest_step"],
        "best": record["best"] if wanted is not None else None,
        "size_bytes": 0,
        "active": False,
        "retention": retention,
        "architecture_hash": record["architecture_hash"],
        "hyperparams_hash": record["hyperparams_hash"],
        "error": None,
    }


def _size(folder: str, exp_hash: str, record: dict[str, Any]) -> int | None:
    """Bytes of the experiment folder as ``CheckpointManager.size_on_disk`` counts them, or None."""
    try:
        return _counted(folder, exp_hash, record)
    except OSError:  # a file removed while it was measured (a writer's retention): ask the manifest
        return None


def _counted(folder: str, exp_hash: str, record: dict[str, Any]) -> int | None:
    total = 0
    step_files = 0
    # a step file's name: the full path counts the bytes its entry records, whatever it is on disk
    step = f"{exp_hash}_step_[0-9]{{6,}}\\.pt"
    steps, others = re.compile(f"^{step}$", re.M), re.compile(f"^(?!{step}$).+$", re.M)
    for top in _scan(folder):
        if top is None:
            return None
        if not top.is_dir():
            total += top.stat().st_size
            continue
        names = os.listdir(top.path)
        if top.name == "model":  # 10,000 names: matched in two C calls, not one by one
            joined = "\n".join(names)
            if joined.count("\n") != max(len(names) - 1, 0):
                return None  # a name holding a newline
            step_files += len(steps.findall(joined))
            names = others.findall(joined)
        for name in names:
            path = os.path.join(top.path, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                return None  # the full path follows it
            total += _tree_bytes(path) if stat.S_ISDIR(st.st_mode) else st.st_size
    if step_files != record["step_files"]:
        return None  # a step file missing, or one that no entry lists: the manifest knows which
    return total + int(record["step_bytes"])


def _scan(folder: str) -> list[Any]:
    """The entries of ``folder``; a None among them for a symlink (the full path follows it)."""
    try:
        with os.scandir(folder) as it:
            return [None if e.is_symlink() else e for e in it]
    except FileNotFoundError:
        return []


def _tree_bytes(folder: str) -> int:
    return sum(
        os.path.getsize(os.path.join(path, name)) for path, _dirs, names in os.walk(folder) for name in names
    )


def _last_active(journal: str) -> str | None:
    """The hash of the last activating event of the journal, read from its end."""
    if not os.path.isfile(journal):
        return None
    with open(journal, "rb") as f:  # OSError: the caller hands over to the full path
        size = os.fstat(f.fileno()).st_size
        start = max(0, size - JOURNAL_TAIL)
        f.seek(start)
        found = newest_activation(f.read(), partial_first=start > 0)
        if found is None and start > 0:
            f.seek(0)
            found = newest_activation(f.read(), partial_first=False)
    return found


# -- output -----------------------------------------------------------------------------------------
def plain_output(stream: IO[str]) -> int | None:
    """The width rich would lay out a table at on ``stream`` if it prints it without style, in UTF-8
    box lines: ``COLUMNS`` when set (as rich reads it), else the pipe width; None otherwise."""
    isatty = getattr(stream, "isatty", None)
    if isatty is None or isatty() or any(os.environ.get(k) is not None for k in _STYLE_ENV):
        return None
    encoding = (getattr(stream, "encoding", None) or "").lower()
    if not encoding.startswith("utf") or "idlelib" in sys.modules:
        return None
    columns = os.environ.get("COLUMNS")
    if columns is None:
        return PIPE_WIDTH
    return int(columns) if columns.isascii() and columns.isdigit() else None


def _plain_cell(text: str) -> bool:
    """Whether rich prints ``text`` (a str cell or line) as it is: printable ASCII, no markup."""
    return text.isascii() and text.isprintable() and "[" not in text and not _EMOJI_CODE.search(text)


def table_lines(root: Path, infos: list[dict[str, Any]], width: int = PIPE_WIDTH) -> str | None:
    """What ``print_summary`` prints for these rows on a plain console, or None (rich must draw it)."""
    head = f"{root}: {plural(len(infos), 'experiment')}, "
    head += f"{plural(sum(i['checkpoints'] for i in infos), 'checkpoint')}, "
    head += format_size(sum(i["size_bytes"] for i in infos))
    if not _plain_cell(str(root)):
        return None
    if not infos:
        return head + "\nno experiments yet: nothing has been saved under this root\n"
    monitors = {i["best"]["monitor"] for i in infos if i["best"] is not None}
    best_header = f"best\n{next(iter(monitors))}" if len(monitors) == 1 else "best"
    headers = [best_header if name == "best" else name for name, _ in EXPERIMENT_COLUMNS]
    right = [options.get("justify") == "right" for _, options in EXPERIMENT_COLUMNS]
    body = []
    for i in infos:
        best = "-"
        if i["best"] is not None:
            best = f"{format_value(i['best']['value'])} @{i['best']['step']}"
            best += "" if best_header != "best" else f" {i['best']['monitor']}"
        body.append(
            [
                ("* " if i["active"] else "  ") + i["exp_hash"],
                "-" if (p := i["parent"]) is None else parent_cell(p["exp_hash"], p["step"], p["reason"]),
                format_time(i["created"]),
                str(i["checkpoints"]),
                "-" if i["latest_step"] is None else str(i["latest_step"]),
                best,
                format_size(i["size_bytes"]),
            ]
        )
    if not all(_plain_cell(line) for h in headers for line in h.split("\n")):
        return None
    if not all(_plain_cell(c) for row in body for c in row[1:]):
        return None
    widths = [max(len(line) for line in h.split("\n")) for h in headers]
    for row in body:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    total = sum(widths) + 2 * (len(widths) - 1)
    if total > width:
        return None  # rich wraps the cells that do not fit
    header_lines = [h.split("\n") for h in headers]
    height = max(len(h) for h in header_lines)
    out = [head]
    for n in range(height):
        cells = []
        for lines, w, r in zip(header_lines, widths, right, strict=True):
            at = n - (height - len(lines))  # aligned to the bottom
            cells.append(_pad(lines[at] if at >= 0 else "", w, r))
        out.append("  ".join(cells))
    out.append(RULE * total)
    out += ["  ".join(_pad(c, w, r) for c, w, r in zip(row, widths, right, strict=True)) for row in body]
    current = next((i for i in infos if i["active"]), None)
    if current is not None:
        out.append(f"* active: {current['exp_hash']}")
    return "".join(line + "\n" for line in out)


def _pad(text: str, width: int, right: bool) -> str:
    if right:
        text = text.rstrip()
        return " " * (width - len(text)) + text
    return text + " " * (width - len(text))


def quick_ls(root_arg: str, *, as_json: bool, monitor: str | None, mode: str | None) -> bool:
    """Print ``weightslab ls`` from the summaries; False (nothing printed) when the full path must."""
    found = rows(root_arg, monitor, mode)
    if found is None:
        return False
    root, infos = found
    if as_json:
        active = next((i["exp_hash"] for i in infos if i["active"]), None)
        data = {"root": str(root), "active": active, "experiments": infos}
        sys.stdout.write(json.dumps(data, indent=2, allow_nan=False, default=str) + "\n")
        return True
    width = plain_output(sys.stdout)
    if width is None:
        return False
    text = table_lines(root, infos, width)
    if text is None:
        return False
    sys.stdout.write(text)
    return True


__all__ = ["plain_output", "quick_ls", "read_current", "rows", "table_lines"]
