"""etl/logs.py: JSON lines off a TTY, text on one, structured fields, levels, and secrets never printed."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from etl import logs

AT = 1_772_368_496.5  # 2026-03-01T12:34:56.500Z: a LogRecord's `created`, so lines are pinned exactly
SECRET = "tok-SECRET-7c1e9a"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure() rewires the process-wide `etl` logger and secrets: put both back for the tests after."""
    logger = logging.getLogger(logs.LOGGER_NAME)
    saved = logger.handlers[:], logger.propagate, logger.level
    secrets = set(logs._SECRETS)
    yield
    logger.handlers[:], logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])
    logs._SECRETS.clear()
    logs._SECRETS.update(secrets)


def record(message: str, *, level: int = logging.INFO, fields: dict | None = None, exc: bool = False):
    """A record as `logs.get_logger("runner").info(message, extra={"fields": fields})` makes it, at AT."""
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    made = logging.LogRecord("etl.runner", level, __file__, 1, message, None, exc_info)
    made.created = AT
    if fields is not None:
        made.fields = fields
    return made


def formatted(log_format: str, made: logging.LogRecord) -> str:
    """The line the handler that configure() installs writes for `made` (without the newline)."""
    logs.configure(log_format, 0, stream=io.StringIO())
    (handler,) = logging.getLogger(logs.LOGGER_NAME).handlers
    return handler.format(made)


def test_json_lines_carry_time_level_logger_message_then_the_fields() -> None:
    """One JSON object per record: ts (UTC, ms), level, logger, message, then each structured field as a key."""
    line = formatted("json", record("run started", fields={"job": "shop", "windows": 3, "dry_run": False}))
    assert line == (
        '{"ts": "2026-03-01T12:34:56.500+00:00", "level": "info", "logger": "etl.runner", '
        '"message": "run started", "job": "shop", "windows": 3, "dry_run": false}'
    )


def test_json_renders_values_it_cannot_encode_as_strings_and_adds_the_traceback() -> None:
    """A datetime field becomes its str(); an exception adds an `exception` key with the traceback."""
    from datetime import UTC, datetime

    made = record("failed", level=logging.ERROR, fields={"at": datetime(2026, 3, 1, tzinfo=UTC)}, exc=True)
    line = json.loads(formatted("json", made))
    assert line["level"] == "error" and line["at"] == "2026-03-01 00:00:00+00:00"
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert line["exception"].endswith("ValueError: boom")


def test_text_lines_are_time_level_message_then_key_value_fields() -> None:
    """Text is `HH:MM:SS level message  k=v …` with the level padded to 7; no fields, no trailing blanks."""
    assert formatted("text", record("run started", fields={"job": "shop", "windows": 3})) == (
        "12:34:56 info    run started  job=shop windows=3"
    )
    assert formatted("text", record("could not release the lease", level=logging.WARNING)) == (
        "12:34:56 warning could not release the lease"
    )
    with_traceback = formatted("text", record("failed", level=logging.ERROR, exc=True)).splitlines()
    assert with_traceback[0] == "12:34:56 error   failed"
    assert with_traceback[1] == "Traceback (most recent call last):"
    assert with_traceback[-1] == "ValueError: boom"


def test_configure_picks_text_on_a_terminal_and_json_elsewhere_unless_told() -> None:
    """Without --log-format a TTY gets text and a pipe gets JSON; an explicit format wins either way."""
    assert logs.configure(None, 0, stream=Terminal()) == "text"
    assert logs.configure(None, 0, stream=io.StringIO()) == "json"
    assert logs.configure("json", 0, stream=Terminal()) == "json"
    assert logs.configure("text", 0, stream=io.StringIO()) == "text"


@pytest.mark.parametrize(
    ("verbosity", "shown"),
    [
        (-2, ["error"]),
        (-1, ["warning", "error"]),
        (0, ["info", "warning", "error"]),
        (1, ["debug", "info", "warning", "error"]),
    ],
)
def test_verbosity_sets_the_lowest_level_shown(verbosity: int, shown: list[str]) -> None:
    """-qq (--log-level error) shows errors, -q warnings and worse, the default adds info, -v adds debug."""
    buffer = io.StringIO()
    logs.configure("json", verbosity, stream=buffer)
    log = logs.get_logger("runner")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert [json.loads(line)["level"] for line in buffer.getvalue().splitlines()] == shown
    assert logs.LOG_LEVELS == {"debug": 1, "info": 0, "warning": -1, "error": -2}


def test_an_error_line_is_text_or_a_json_log_line_with_its_exit_code() -> None:
    """`etl: error: job X: …` in text; in JSON mode level error, the message alone, exit_code and job; scrubbed."""
    logs.register_secret(SECRET)
    message = f"Intercom rejected the token {SECRET} (401)"
    assert not logs.json_mode()  # never configured: the library on its own prints text
    assert (
        logs.error_line(message, 3, job="shop")
        == "etl: error: job shop: Intercom rejected the token *** (401)"
    )
    assert logs.error_line("interrupted", 130) == "etl: error: interrupted"
    logs.configure("json", 0, stream=io.StringIO())
    assert logs.json_mode()
    line = json.loads(logs.error_line(message, 3, job="shop"))
    assert {k: v for k, v in line.items() if k != "ts"} == {
        "level": "error",
        "logger": "etl",
        "message": "Intercom rejected the token *** (401)",
        "exit_code": 3,
        "job": "shop",
    }
    assert "job" not in json.loads(logs.error_line("interrupted", 130))
    logs.configure("text", 0, stream=io.StringIO())
    assert not logs.json_mode()


def test_a_bugs_traceback_goes_above_the_text_line_and_into_the_json_line() -> None:
    """With -v a bug's traceback is printed: text above the error line, JSON as its `exception` key."""
    trace = f"Traceback (most recent call last):\n  ...\nValueError: {SECRET}\n"
    logs.register_secret(SECRET)
    logs.configure("text", 1, stream=io.StringIO())
    assert logs.error_line("unexpected error", 1, exception=trace) == (
        "Traceback (most recent call last):\n  ...\nValueError: ***\netl: error: unexpected error"
    )
    logs.configure("json", 1, stream=io.StringIO())
    (line,) = logs.error_line("unexpected error", 1, exception=trace).splitlines()
    assert json.loads(line)["exception"] == "Traceback (most recent call last):\n  ...\nValueError: ***"


def test_configure_twice_replaces_the_handler_and_keeps_records_off_the_root_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Re-configuring (one process, several CliRunner calls) never doubles lines, nor leaks them to root."""
    first, second = io.StringIO(), io.StringIO()
    logs.configure("json", 0, stream=first)
    logs.configure("text", 0, stream=second)
    logs.get_logger("etl.pipeline").info("once")
    assert first.getvalue() == ""
    assert second.getvalue().endswith(" info    once\n") and second.getvalue().count("once") == 1
    assert caplog.records == []
    assert logs.get_logger("pipeline").name == logs.get_logger("etl.pipeline").name == "etl.pipeline"


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_registered_secret_never_appears_in_message_fields_or_traceback(log_format: str) -> None:
    """A token registered once is replaced by *** wherever it shows up in a line, in both formats."""
    logs.register_secret(SECRET)
    buffer = io.StringIO()
    logs.configure(log_format, 0, stream=buffer)
    log = logs.get_logger("http")
    log.warning(f"GET /me?token={SECRET} failed", extra={"fields": {"header": f"Bearer {SECRET}"}})
    try:
        raise RuntimeError(f"refused {SECRET}")
    except RuntimeError:
        log.exception("unexpected error")
    text = buffer.getvalue()
    assert SECRET not in text
    assert text.count("***") == 3  # message, field, traceback line
    assert "GET /me?token=*** failed" in text and "Bearer ***" in text and "RuntimeError: refused ***" in text


def test_a_secret_that_json_escapes_is_scrubbed_from_json_lines() -> None:
    """A secret with a quote, a backslash or a non-ASCII character is written escaped (`\\"`, `\\\\`, `\\u00f6`)
    in a JSON line: it is replaced before encoding, in the message, a field (nested too) and the traceback."""
    secret = 'tök"en\\7c1e9a'
    logs.register_secret(secret)
    buffer = io.StringIO()
    logs.configure("json", 0, stream=buffer)
    log = logs.get_logger("http")
    log.warning(f"GET /me?token={secret} failed", extra={"fields": {"auth": [f"Bearer {secret}"]}})
    try:
        raise RuntimeError(f"refused {secret}")
    except RuntimeError:
        log.exception("unexpected error")
    first, second = (json.loads(line) for line in buffer.getvalue().splitlines())
    assert first["message"] == "GET /me?token=*** failed" and first["auth"] == ["Bearer ***"]
    assert second["exception"].endswith("RuntimeError: refused ***")
    assert secret not in buffer.getvalue() and json.dumps(secret)[1:-1] not in buffer.getvalue()


def test_scrubbing_a_json_line_never_cuts_an_escape_in_two() -> None:
    """A newline followed by a secret's tail is `\\n` + tail once encoded: that is not the secret `n` + tail,
    and the line stays valid JSON with the message as logged."""
    logs.register_secret("n0tice-7c1e9a")
    assert (
        json.loads(formatted("json", record("line one\n0tice-7c1e9a")))["message"] == "line one\n0tice-7c1e9a"
    )


def test_secrets_shorter_than_four_characters_are_not_registered() -> None:
    """An empty or tiny value (an unset variable, a typo) must not blank out ordinary words in every line."""
    for value in ("", "a", "on"):
        logs.register_secret(value)
    logs.register_secret("tok1")
    assert logs.scrub("a tok1 on") == "a *** on"
