"""Structured logging setup (structlog): key=value for people, JSON for machines."""

from __future__ import annotations

import logging
import sys

import structlog

from nftproxy.problems import Problem


def configure(*, json: bool = False, level: int = logging.INFO) -> None:
    """Send structured log lines to stderr."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def report(problems: list[Problem] | tuple[Problem, ...]) -> None:
    """Log every problem: errors as warnings, deliberate skips as info."""
    log = structlog.get_logger("nftproxy")
    for p in problems:
        emit = log.info if p.note else log.warning
        emit(
            "skipped" if p.note else "invalid object skipped",
            source=p.source or None,
            object=p.obj or None,
            field=p.field or None,
            reason=p.message,
        )
