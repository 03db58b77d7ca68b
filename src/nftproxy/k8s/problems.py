"""Problems found in input: reported with where they came from, never fatal."""

from __future__ import annotations

from dataclasses import dataclass

from nftproxy import log


@dataclass(frozen=True)
class Problem:
    """Something in the input that was skipped, with enough context to find it.

    ``source`` is a file path (or ``api``), ``obj`` is ``Kind namespace/name``
    and ``field`` the JSON path of the offending field.
    """

    source: str
    obj: str
    field: str
    message: str
    note: bool = False
    """True for something skipped on purpose (an ignored kind or Service), not an error."""

    def __str__(self) -> str:
        where = ": ".join(p for p in (self.source, self.obj, self.field) if p)
        return f"{where}: {self.message}"


class InvalidObjectError(ValueError):
    """An API object that cannot be used, and the field that is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def report(problems: list[Problem] | tuple[Problem, ...]) -> None:
    """Log every problem: errors as warnings, deliberate skips as info."""
    if not problems:
        return
    out = log.logger()
    for p in problems:
        emit = out.info if p.note else out.warning
        emit(
            "skipped" if p.note else "invalid object skipped",
            source=p.source or None,
            object=p.obj or None,
            field=p.field or None,
            reason=p.message,
        )
