"""`etl demo` and `etl sandbox serve`: the real job against the built-in sandbox."""

from __future__ import annotations

from pathlib import Path

from etl.errors import NotBuiltYet


def run_demo(seed: int, workdir: Path | None) -> int:
    raise NotBuiltYet("`etl demo` is not built yet (issue 5): it needs the sandbox and the pipeline")


def serve_sandbox(seed: int, intercom_port: int, klaviyo_port: int) -> None:
    raise NotBuiltYet("`etl sandbox serve` is not built yet (issues 3 and 4)")
