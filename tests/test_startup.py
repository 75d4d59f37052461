"""`etl --help` starts fast: it imports click and the light modules only, not the I/O libraries a run needs."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("sqlalchemy", "requests", "yaml", "phonenumbers", "alembic", "tenacity", "prometheus_client")


def test_help_imports_no_io_library() -> None:
    """SQLAlchemy alone is ~0.3 s of CPU at import; the help must not pay for what only commands use."""
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['etl', '--help']\n"
        "try:\n"
        "    runpy.run_module('etl', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Keep a Klaviyo account in step" in proc.stdout  # the help was printed
    assert proc.stdout.splitlines()[-1] == "[]"
