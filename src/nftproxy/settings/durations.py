"""Go durations (``30s``, ``1m0s``, ``500ms``), as kube-proxy's flags and config take them."""

from __future__ import annotations

import re
from typing import Any

from nftproxy.settings.node import ConfigError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any, what: str) -> float:
    """A Go duration in seconds; a leading ``-`` makes it negative (for validation
    to refuse by name), ``0`` and ``""`` are zero."""
    text = str(value).strip()
    if text in ("0", ""):
        return 0.0
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    parts = _DURATION.findall(body)
    if not parts or "".join(n + u for n, u in parts) != body:
        raise ConfigError(f"{what}: not a duration: {value!r} (e.g. 30s, 1m0s, 500ms)")
    return sign * sum(float(n) * _UNITS[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    """seconds as Go prints a duration: ``0s``, ``500ms``, ``30s``, ``15m0s``, ``24h0m0s``."""
    if seconds == 0:
        return "0s"
    if abs(seconds) < 1:
        return f"{seconds * 1000:g}ms"
    sign = "-" if seconds < 0 else ""
    rest = abs(seconds)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:g}s"
    if hours or minutes:
        text = f"{int(minutes)}m{text}"
    if hours:
        text = f"{int(hours)}h{text}"
    return sign + text
