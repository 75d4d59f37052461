"""Logging: human text on a TTY, JSON lines otherwise (docs/design.md §3.1); secrets are redacted from every
record.

Log calls pass structured fields as `extra={"fields": {...}}`; they become JSON keys or `key=value` text.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

LOGGER_NAME = "etl"
_SECRETS: set[str] = set()


def register_secret(value: str) -> None:
    """Make sure `value` never appears in a log line (tokens read from the environment)."""
    if value and len(value) >= 4:
        _SECRETS.add(value)


def scrub(text: str, extra: Iterable[str] = ()) -> str:
    """Replace every registered secret, and every non-empty one of `extra` (a client's own), with `***`."""
    for secret in (*_SECRETS, *extra):
        if secret:
            text = text.replace(secret, "***")
    return text


def _scrub_fields(value: Any) -> Any:
    """`value` with every string in it scrubbed, written as json.dumps(default=str) would write it.

    Scrubbing comes before encoding: JSON escapes quotes, backslashes and non-ASCII characters, so an encoded
    secret need not match the registered one; and replacing the escaped form instead could cut an escape
    in two (the `n` of a newline's `\\n` starting a secret `n…`), breaking the line.
    """
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {scrub(k) if isinstance(k, str) else k: _scrub_fields(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_fields(item) for item in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return scrub(str(value))


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(_scrub_fields(line))


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S")
        fields = getattr(record, "fields", None) or {}
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        text = f"{stamp} {record.levelname.lower():7} {record.getMessage()}" + (f"  {extra}" if extra else "")
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return scrub(text)


class _Handler(logging.StreamHandler):
    """Writes each line to its stream, or through `divert` while progress bars are live (see `divert`)."""

    divert: Callable[[str], None] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        write = self.divert
        if write is None:
            super().emit(record)
            return
        try:
            write(self.format(record))
        except Exception:  # as StreamHandler does: a failing log line must not end the run
            self.handleError(record)


def divert(write: Callable[[str], None] | None) -> None:
    """Send every `etl` log line through `write`, or back to the handler's own stream (None).

    Live progress bars own the terminal's last lines: a line written past them lands on the bars' line and the
    next redraw copies the bars into the scrollback. Their rich Console prints a line above them instead.
    """
    for handler in logging.getLogger(LOGGER_NAME).handlers:
        if isinstance(handler, _Handler):
            handler.divert = write


# --log-level and the verbosity it stands for: -v is debug, -q warning, -qq error (docs/design.md §3.1)
LOG_LEVELS = {"debug": 1, "info": 0, "warning": -1, "error": -2}


def configure(log_format: str | None, verbosity: int, stream: TextIO | None = None) -> str:
    """Set up the `etl` logger once per process; returns the format chosen ("text" or "json")."""
    stream = stream or sys.stderr
    chosen = log_format or ("text" if stream.isatty() else "json")
    handler = _Handler(stream)
    handler.setFormatter(_JsonFormatter() if chosen == "json" else _TextFormatter())
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers[:] = [handler]
    logger.propagate = False
    levels = {1: logging.DEBUG, 0: logging.INFO, -1: logging.WARNING, -2: logging.ERROR}
    logger.setLevel(levels[max(-2, min(1, verbosity))])
    return chosen


def json_mode() -> bool:
    """Whether configure() chose JSON lines: then everything on stderr is one JSON object a line, the summary
    and the `etl: error:` lines too. False for a logger never configured (the library used on its own)."""
    return any(isinstance(h.formatter, _JsonFormatter) for h in logging.getLogger(LOGGER_NAME).handlers)


def json_line(level: str, message: str, fields: dict[str, Any], *, logger: str = LOGGER_NAME) -> str:
    """One JSON log line as the `etl` logger writes it (ts, level, logger, message, fields; scrubbed)."""
    record = logging.makeLogRecord(
        {
            "name": logger,
            "levelname": level.upper(),
            "levelno": logging.getLevelName(level.upper()),
            "msg": message,
        }
    )
    record.fields = fields
    return _JsonFormatter().format(record)


def error_line(message: str, exit_code: int, *, job: str | None = None, exception: str | None = None) -> str:
    """How a failure is printed, on one line: `etl: error: [job X: ]…`, or in JSON mode a log line at level
    error with `exit_code` (and `job`); `exception` is a bug's traceback for -v (text: printed above the line)."""
    message = scrub(message)
    if json_mode():
        fields: dict[str, Any] = {"exit_code": exit_code}
        if job is not None:
            fields["job"] = job
        if exception:
            fields["exception"] = exception.rstrip("\n")
        return json_line("error", message, fields)
    line = f"etl: error: {f'job {job}: ' if job is not None else ''}{message}"
    return scrub(exception) + line if exception else line


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if not name.startswith(LOGGER_NAME) else name)
