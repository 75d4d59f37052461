"""The import layers of docs/design.md §10 are enforced by `lint-imports` (run by `make lint`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True
    )


def copy_of_project(tmp_path: Path) -> Path:
    tree = tmp_path / "project"
    shutil.copytree(ROOT / "etl", tree / "etl", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_the_layers_hold_today(tmp_path: Path) -> None:
    """Every contract is kept by the code as it is."""
    result = lint_imports(copy_of_project(tmp_path))
    assert result.returncode == 0, result.stdout[-2000:]
    assert "3 kept, 0 broken" in result.stdout


def test_a_pure_module_importing_requests_breaks_the_lint(tmp_path: Path) -> None:
    """`import requests` in etl/events.py (pure core) fails lint-imports, naming the contract."""
    tree = copy_of_project(tmp_path)
    events = tree / "etl" / "events.py"
    events.write_text(
        events.read_text().replace(
            "from __future__ import annotations\n",
            "from __future__ import annotations\n\nimport requests  # noqa\n",
            1,
        )
    )
    result = lint_imports(tree)
    assert result.returncode == 1
    assert "The pure core imports no I/O library BROKEN" in " ".join(result.stdout.split())


def test_a_client_importing_the_pipeline_breaks_the_lint(tmp_path: Path) -> None:
    """The Intercom client importing etl.pipeline (a layer above it) fails lint-imports."""
    tree = copy_of_project(tmp_path)
    client = tree / "etl" / "intercom.py"
    client.write_text(client.read_text() + "\nfrom etl import pipeline  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode == 1
    assert "BROKEN" in result.stdout and "etl.intercom -> etl.pipeline" in result.stdout
