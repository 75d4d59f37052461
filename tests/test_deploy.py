"""deploy/ stays true: the Kubernetes examples to the CLI, jobs.yaml, Kubernetes' schemas and the image; the
image to the package version and its locked dependencies."""

from __future__ import annotations

import copy
import itertools
import os
import re
import shlex
import subprocess
import tomllib
from importlib.metadata import distribution
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from etl.cli import cli
from etl.config import parse_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
LOCK = ROOT / "deploy" / "requirements.lock"
README = ROOT / "README.md"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
MANIFESTS = sorted(p.name for p in DEPLOY.glob("*.yaml"))
WORKLOADS = ("cronjob.yaml", "migrate-job.yaml", "backfill-indexed-job.yaml")
KUBERNETES_VERSION = "1.33"  # the backfill's backoffLimitPerIndex is GA from 1.33


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def pod_spec(doc: dict) -> dict:
    spec = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
    return spec["template"]["spec"]


def containers(doc: dict) -> list[dict]:
    return pod_spec(doc)["containers"]


def test_configmap_holds_a_valid_jobs_yaml() -> None:
    """The ConfigMap's jobs.yaml parses with the database URL the Secret provides."""
    (config,) = [d for d in documents("configmap.yaml") if d["kind"] == "ConfigMap"]
    settings = parse_settings(
        config["data"]["jobs.yaml"], {"ETL_DATABASE_URL": "postgresql+psycopg://db/etl"}
    )
    assert list(settings.jobs) == ["intercom_to_klaviyo"]
    assert settings.database_url == "postgresql+psycopg://db/etl"


def test_cronjob_forbids_concurrency_and_runs_the_configured_job() -> None:
    """The CronJob never overlaps runs and names a job that the ConfigMap defines."""
    (cron,) = documents("cronjob.yaml")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = containers(cron)
    assert container["args"] == ["run", "intercom_to_klaviyo"]
    assert {"secretRef": {"name": "etl-secrets"}} in container["envFrom"]


@pytest.mark.parametrize("name", ["cronjob.yaml", "migrate-job.yaml"])
def test_container_args_are_valid_commands(name: str) -> None:
    """Each container's arguments are an etl command that exists (its --help succeeds)."""
    checked = []
    for doc in documents(name):
        for container in containers(doc):
            args = [a for a in container["args"] if not a.startswith("intercom_to")]
            result = CliRunner().invoke(cli, [*args, "--help"])
            assert result.exit_code == 0, result.output
            checked.append(args[0])
    assert checked, f"{name} has no container to check"


def test_backfill_slices_are_contiguous_months() -> None:
    """The Indexed Job's shell computes [since, until) slices that tile the year without gaps."""

    (job,) = documents("backfill-indexed-job.yaml")
    assert job["spec"]["completionMode"] == "Indexed"
    script = containers(job)[0]["args"][0].replace("exec etl", "echo")
    slices = []
    for index in range(job["spec"]["completions"]):
        out = subprocess.run(
            ["sh", "-c", script],
            env={"JOB_COMPLETION_INDEX": str(index)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        words = shlex.split(out)
        slices.append((words[words.index("--since") + 1], words[words.index("--until") + 1]))
    assert slices[0][0] == "2025-01-01" and slices[-1][1] == "2026-01-01"
    assert all(a[1] == b[0] for a, b in itertools.pairwise(slices))


# -- Kubernetes ------------------------------------------------------------------------------------------
def kubernetes_validate() -> Any:
    """The validator, once it is a dev dependency; until then a laptop or CI without it skips."""
    try:
        import kubernetes_validate
    except ImportError:
        declared = any(
            d.startswith("kubernetes-validate") for d in PYPROJECT["project"]["optional-dependencies"]["dev"]
        )
        if declared and os.environ.get("CI"):
            pytest.fail("kubernetes-validate is a dev dependency but is not installed")
        pytest.skip("kubernetes-validate is not installed")
    return kubernetes_validate


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifests_are_valid_kubernetes_objects(name: str) -> None:
    """Every document matches Kubernetes' OpenAPI schema, strictly: an unknown or misplaced field fails."""
    validator = kubernetes_validate()
    docs = documents(name)
    for doc in docs:
        validator.validate(doc, KUBERNETES_VERSION, strict=True)
    broken = copy.deepcopy(docs[0])
    broken["metadata"]["lables"] = {"app": "etl"}  # the validator is strict: a typo would not pass
    with pytest.raises(validator.ValidationError, match="'lables' was unexpected"):
        validator.validate(broken, KUBERNETES_VERSION, strict=True)


def dockerfile_user() -> tuple[int, int]:
    """The uid and gid the image runs as, checked against the user and group the Dockerfile creates."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    (user,) = re.findall(r"^USER (\d+):(\d+)$", text, re.MULTILINE)
    assert re.search(rf"groupadd --gid {user[1]} etl\b", text)
    assert re.search(rf"useradd --uid {user[0]} --gid {user[1]} ", text)
    return int(user[0]), int(user[1])


@pytest.mark.parametrize("name", WORKLOADS)
def test_every_pod_runs_as_the_images_non_root_user_on_a_read_only_root(name: str) -> None:
    """Pods run as the image's numeric non-root user, under RuntimeDefault seccomp; containers cannot escalate,
    hold no capability and cannot write their root filesystem."""
    uid, gid = dockerfile_user()
    assert uid != 0 and gid != 0
    (doc,) = documents(name)
    pod = pod_spec(doc)
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": gid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        assert all(mount.get("readOnly") for mount in container["volumeMounts"])


def test_every_image_is_tagged_with_the_package_version() -> None:
    """The manifests, the Dockerfile's build line and the README's name `etl:<pyproject version>`, never latest."""
    tag = f"etl:{PYPROJECT['project']['version']}"
    images = [c["image"] for name in WORKLOADS for doc in documents(name) for c in containers(doc)]
    assert images == [tag] * len(WORKLOADS)
    for text in (DOCKERFILE.read_text(encoding="utf-8"), README.read_text(encoding="utf-8")):
        assert f"docker build -f deploy/Dockerfile -t {tag} ." in text
        assert set(re.findall(r"\betl:[\w.]+", text)) == {tag}


def test_the_migration_job_gets_a_new_name_on_every_deploy() -> None:
    """generateName (no fixed name) lets every deploy create its own Job; the documented command creates it
    (apply refuses generateName) and waits for it; finished Jobs are cleaned up."""
    (job,) = documents("migrate-job.yaml")
    assert "name" not in job["metadata"] and job["metadata"]["generateName"] == "etl-db-upgrade-"
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    command = (
        'kubectl wait --for=condition=complete --timeout=10m "$(kubectl create -f '
        'deploy/kubernetes/migrate-job.yaml -o name)"'
    )
    assert f"#   {command}\n" in (DEPLOY / "migrate-job.yaml").read_text(encoding="utf-8")
    assert f"  {command}\n" in README.read_text(encoding="utf-8")
    assert "kubectl apply" not in README.read_text(encoding="utf-8")


# -- the image's dependencies ----------------------------------------------------------------------------
def locked() -> dict[str, tuple[str, list[str]]]:
    """deploy/requirements.lock: name -> (version, sha256 hashes)."""
    text = LOCK.read_text(encoding="utf-8").replace("\\\n", " ")
    pins = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            requirement, *options = line.split()
            name, version = requirement.split("==")
            assert all(o.startswith("--hash=sha256:") and len(o) == 14 + 64 for o in options), line
            pins[canonicalize_name(name)] = (version, [o.removeprefix("--hash=sha256:") for o in options])
    return pins


def requirements_of(name: str, extras: set[str]) -> list[Requirement]:
    """What the installed distribution requires on this platform, with these extras asked for."""
    found = []
    for line in distribution(name).requires or []:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": extra}) for extra in extras or {""}):
            found.append(requirement)
    return found


def test_the_lock_pins_exactly_the_runtime_closure_with_hashes() -> None:
    """Every runtime dependency and everything it needs is pinned with == and hashed, at a version
    pyproject.toml accepts; nothing else (no dev tool) is in the image."""
    pins = locked()
    roots = [Requirement(line) for line in PYPROJECT["project"]["dependencies"]]
    visited: set[tuple[str, frozenset[str]]] = set()
    pending = list(roots)
    while pending:  # the closure through the installed metadata: each name must be locked to go on
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} (needed via {requirement}) is not in deploy/requirements.lock"
        assert requirement.specifier.contains(pins[name][0], prereleases=True), (requirement, pins[name])
        if (name, frozenset(requirement.extras)) not in visited:
            visited.add((name, frozenset(requirement.extras)))
            pending += requirements_of(name, set(requirement.extras))
    assert sorted(pins) == sorted({name for name, _ in visited})
    assert all(hashes for _, hashes in pins.values())
    assert {"pytest", "ruff", "mypy", "hypothesis"}.isdisjoint(pins)


def test_the_dockerfile_installs_the_lock_without_resolving_anything() -> None:
    """The image installs the lock in hash-checking mode, then the project, both without dependency resolution."""
    runs = re.findall(r"^RUN (.*)$", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    installs = [c for run in runs for c in run.split("&&") if "pip install" in c]
    assert [c.strip() for c in installs] == [
        "pip install --no-deps --require-hashes -r requirements.lock",
        "pip install --no-deps .",
    ]
    assert "COPY deploy/requirements.lock ./" in DOCKERFILE.read_text(encoding="utf-8")
