"""The `Reply` event: one complete SMTP reply (RFC 5321 §4.2)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Reply"]


# Don't subclass this: events are compared by type and value.
@dataclass(frozen=True, slots=True)
class Reply:
    """A complete server reply.

    `code` is the three-digit reply code; `lines` holds the text of every line without the code,
    the separator or the CRLF; `enhanced` is the RFC 3463 status code (class, subject, detail)
    when the server sent one on the first line, with the status text left in `lines`.
    """

    code: int
    lines: tuple[str, ...] = ()
    enhanced: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code {self.code} is not in 200..599")
        if not isinstance(self.lines, tuple):
            object.__setattr__(self, "lines", tuple(self.lines))

    @property
    def text(self) -> str:
        """All lines joined with newlines."""
        return "\n".join(self.lines)

    @property
    def is_positive(self) -> bool:
        """2xx: the command succeeded."""
        return 200 <= self.code < 300

    @property
    def is_intermediate(self) -> bool:
        """3xx: the server waits for more (DATA's 354, AUTH's 334)."""
        return 300 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        """4xx: failed, but may succeed later."""
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        """5xx: failed, and will fail again."""
        return self.code >= 500

    def __str__(self) -> str:
        status = ".".join(map(str, self.enhanced)) + " " if self.enhanced else ""
        first = self.lines[0] if self.lines else ""
        return f"{self.code} {status}{first}".rstrip()
