"""Structured logging (structlog): key=value lines for people, JSON lines for machines.

structlog is imported on first use: a render that has nothing to report does not
pay for it.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

_settings = {"json": False, "level": logging.INFO, "ready": False}


def configure(*, json: bool = False, level: int = logging.INFO) -> None:
    """Choose the format and level; takes effect on the first log line."""
    _settings.update(json=json, level=level, ready=False)


def logger(name: str = "nftproxy") -> Any:
    """A structlog logger writing to stderr."""
    import structlog  # noqa: PLC0415 - deferred, see the module docstring

    if not _settings["ready"]:
        renderer: structlog.types.Processor = (
            structlog.processors.JSONRenderer()
            if _settings["json"]
            else structlog.dev.ConsoleRenderer(colors=False)
        )
        structlog.configure(
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                renderer,
            ],
            wrapper_class=structlog.make_filtering_bound_logger(int(_settings["level"])),
            logger_factory=structlog.PrintLoggerFactory(sys.stderr),
            cache_logger_on_first_use=False,
        )
        _settings["ready"] = True
    return structlog.get_logger(name)
