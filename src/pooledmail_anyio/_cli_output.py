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

# Control characters (C0 but tab and newline, DEL, C1) shown as escapes: what a server says
# (its greeting, replies, EHLO keywords, quoted in reports and errors) reaches the operator's
# terminal, where an ESC sequence could rewrite the screen or the title.
_CONTROLS = {
    code: f"\\x{code:02x}"
    for code in (*range(0x00, 0x20), *range(0x7F, 0xA0))
    if code not in (0x09, 0x0A)
}


def _shown(text: str) -> str:
    return text.translate(_CONTROLS)


def _cell(text: str) -> Any:
    """`text` as a rich cell: control characters escaped, and never read as rich markup (a
    server's "[/bold]" is text, not a closing tag)."""
    from rich.text import Text

    return Text(_shown(text))


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
        print(_shown(text), file=self.out)

    def error(self, text: str) -> None:
        print(f"pooledmail: {_shown(text)}", file=self.err)

    def fields(self, title: str, rows: Sequence[tuple[str, str]]) -> None:
        """Name-value pairs (the probe's report)."""
        if self._console is not None:
            from rich.table import Table

            table = Table(title=_cell(title), show_header=False, title_justify="left")
            table.add_column(style="bold")
            table.add_column(overflow="fold")
            for name, value in rows:
                table.add_row(_cell(name), _cell(value))
            self._console.print(table)
            return
        width = max((len(name) for name, _ in rows), default=0)
        for name, value in rows:
            self.line(f"{name:<{width}}  {value}")

    def table(self, title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        if self._console is not None:
            from rich.table import Table

            table = Table(title=_cell(title), title_justify="left")
            for name in header:
                table.add_column(_cell(name), overflow="fold")
            for row in rows:
                table.add_row(*(_cell(str(cell)) for cell in row))
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
