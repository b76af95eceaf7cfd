"""A rich progress display for analyses: one bar for the checkpoints, one per download in flight.

Downloads report through :meth:`AnalysisProgress.download_bar_class`, a tqdm-compatible class that
``huggingface_hub`` accepts as ``tqdm_class``. The display is disabled when the console is not a terminal,
so logs and captured output stay clean.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from weightslab.util.progress import RichProgress


class AnalysisProgress(RichProgress):
    """Progress of an analysis run; use as a context manager."""

    def __init__(
        self, console: Console | None = None, *, total: int | None = None, description: str = "analysing"
    ):
        super().__init__(
            console if console is not None else Console(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            _AmountColumn(),
            TimeElapsedColumn(),
            transient=False,
        )
        self._total = total
        self._description = description
        self._task: TaskID | None = None

    def __enter__(self) -> AnalysisProgress:
        super().__enter__()
        if self._total is not None:
            self._task = self._progress.add_task(self._description, total=self._total)
        return self

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more checkpoints as done."""
        if self._task is not None:
            self._progress.advance(self._task, n)

    def download_bar_class(self) -> type[_DownloadBar]:
        """A tqdm-compatible class whose bars are rows of this display (pass it as ``tqdm_class``)."""
        return type("BoundDownloadBar", (_DownloadBar,), {"_progress": self._progress})


class _DownloadBar:
    """The subset of tqdm's interface that ``huggingface_hub`` downloads use."""

    _progress: Progress

    def __init__(
        self,
        *args: Any,
        total: float | None = None,
        initial: float = 0,
        desc: str | None = None,
        **kwargs: Any,
    ) -> None:
        self._task = self._progress.add_task(
            f"  {desc or 'download'}", total=total, completed=int(initial), kind="bytes"
        )

    def update(self, n: float | None = 1) -> None:
        self._progress.advance(self._task, n or 0)

    def close(self) -> None:
        # Finished downloads leave the display; the checkpoint bar shows the overall progress.
        if self._task in self._progress.task_ids:
            self._progress.remove_task(self._task)

    def __enter__(self) -> _DownloadBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _AmountColumn(ProgressColumn):
    """Checkpoints as ``done/total``; downloads as bytes and speed."""

    def __init__(self) -> None:
        super().__init__()
        self._count = MofNCompleteColumn()
        self._bytes = DownloadColumn()
        self._speed = TransferSpeedColumn()

    def render(self, task: Task) -> Text:
        if task.fields.get("kind") == "bytes":
            return Text.assemble(self._bytes.render(task), " ", self._speed.render(task))
        rendered = self._count.render(task)
        return rendered if isinstance(rendered, Text) else Text(str(rendered))
