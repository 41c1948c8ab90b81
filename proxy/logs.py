"""What the gateway says while it runs: `--log-level` and `--log-format text|json` for every
`oaigate.*` logger, the access log (one line per request at `info`), and warnings for upstream
failures and budget refusals, rate-limited so a storm prints a line, not a flood.

A line never carries a key or a body: the access log names the key by its configured name (or its
`anon-<hash>`), and messages are built from the exchange's fields, never from request text.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LEVELS = ("debug", "info", "warning", "error")
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)))


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra={...}` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage(),
        }
        line.update((k, v) for k, v in vars(record).items() if k not in _RECORD_FIELDS and not k.startswith("_"))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(level: str = "warning", fmt: str = "text") -> None:
    """Send `oaigate.*` records at `level` and above to stderr, as text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("oaigate")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class RateLimitedWarning:
    """A warning said at most once per `every_s` per kind; the lines it held back are counted in the next."""

    def __init__(self, logger: logging.Logger, every_s: float = 10.0) -> None:
        self.logger, self.every_s = logger, every_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def __call__(self, kind: str, message: str, now: float | None = None, **extra: Any) -> bool:
        now = time.monotonic() if now is None else now
        last = self._last.get(kind)
        if last is not None and now - last < self.every_s:
            self._held[kind] = self._held.get(kind, 0) + 1
            return False
        held = self._held.pop(kind, 0)
        if held:
            message += f" (and {held} more like it in the last {now - last:.0f}s)" if last is not None else ""
        self._last[kind] = now
        self.logger.warning(message, extra=extra)
        return True
