"""How the `pooledmail` command prints: `rich` tables and progress bars where a terminal is
attached and rich is installed (`pooledmail[cli]`), plain aligned text everywhere else, so that
scripts and logs read the same words either way. Results go to stdout, progress and errors to
stderr."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

__all__ = ["Output"]


def _console(stream: TextIO) -> Any:
    try:
        from rich.console import Console
    except ImportError:
        return None
    console = Console(file=stream, highlight=False)
    # rich says whether a terminal is attached (and honours FORCE_COLOR, NO_COLOR, TTY_COMPATIBLE).
    return console if console.is_terminal else None


class Output:
    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._console = _console(self.out)
        self._err_console = _console(self.err)

    @property
    def rich(self) -> bool:
        return self._console is not None

    def line(self, text: str = "") -> None:
        print(text, file=self.out)

    def error(self, text: str) -> None:
        print(f"pooledmail: {text}", file=self.err)

    def fields(self, title: str, rows: Sequence[tuple[str, str]]) -> None:
        """Name-value pairs (the probe's report)."""
        if self._console is not None:
            from rich.table import Table

            table = Table(title=title, show_header=False, title_justify="left")
            table.add_column(style="bold")
            table.add_column(overflow="fold")
            for name, value in rows:
                table.add_row(name, value)
            self._console.print(table)
            return
        width = max((len(name) for name, _ in rows), default=0)
        for name, value in rows:
            self.line(f"{name:<{width}}  {value}")

    def table(self, title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        if self._console is not None:
            from rich.table import Table

            table = Table(title=title, title_justify="left")
            for name in header:
                table.add_column(name, overflow="fold")
            for row in rows:
                table.add_row(*row)
            self._console.print(table)
            return
        widths = [
            max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)
        ]
        for row in (header, *rows):
            cells = [f"{cell:<{width}}" for cell, width in zip(row, widths, strict=False)]
            self.line("  ".join(cells).rstrip())

    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[_Advance]:
        """A progress bar on stderr while a terminal is attached; nothing otherwise."""
        if self._err_console is None:
            yield _Advance(None, None)
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self._err_console,
            transient=True,
        ) as progress:
            yield _Advance(progress, progress.add_task(description, total=total))


class _Advance:
    __slots__ = ("_progress", "_task")

    def __init__(self, progress: Any, task: Any) -> None:
        self._progress = progress
        self._task = task

    def __call__(self, steps: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, steps)
