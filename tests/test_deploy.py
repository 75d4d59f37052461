"""deploy/ and the README's cron section stay true: the Kubernetes examples to the CLI, jobs.yaml, Kubernetes'
schemas and the image; the image to the package version and its locked dependencies; the crontab lines to
what they do when cron runs them."""

from __future__ import annotations

import copy
import itertools
import os
import re
import shlex
import subprocess
import sys
import textwrap
import tomllib
from datetime import UTC, datetime, timedelta
from importlib.metadata import distribution
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from etl.cli import cli
from etl.config import parse_settings, parse_timestamp
from etl.state import StateStore
from tests.run_fixtures import IC_TOKEN, KL_KEY, START_DATE, Sandboxes, sandboxes

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
LOCK = ROOT / "deploy" / "requirements.lock"
README = ROOT / "README.md"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
MANIFESTS = sorted(p.name for p in DEPLOY.glob("*.yaml"))
WORKLOADS = ("cronjob.yaml", "migrate-job.yaml", "backfill-indexed-job.yaml", "reconcile-cronjob.yaml")
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


def test_the_reconcile_cronjob_checks_the_configured_job_daily_as_the_run_cronjob_runs() -> None:
    """Once a day at a fixed UTC time, never overlapping itself, `etl reconcile` of the job the ConfigMap
    defines, in a pod built exactly like the run CronJob's (image, user, lock-down, config, secrets)."""
    (reconcile,) = documents("reconcile-cronjob.yaml")
    (run,) = documents("cronjob.yaml")
    spec = reconcile["spec"]
    minute, hour, *every = spec["schedule"].split()
    assert minute.isdigit() and hour.isdigit() and every == ["*", "*", "*"]
    assert (spec["timeZone"], spec["concurrencyPolicy"]) == ("Etc/UTC", "Forbid")
    (container,) = containers(reconcile)
    (config,) = [d for d in documents("configmap.yaml") if d["kind"] == "ConfigMap"]
    jobs = parse_settings(
        config["data"]["jobs.yaml"], {"ETL_DATABASE_URL": "postgresql+psycopg://db/etl"}
    ).jobs
    assert container["args"] == ["reconcile", *jobs]
    assert {k: v for k, v in container.items() if k != "args"} == {
        k: v for k, v in containers(run)[0].items() if k != "args"
    }
    assert {k: v for k, v in pod_spec(reconcile).items() if k != "containers"} == {
        k: v for k, v in pod_spec(run).items() if k != "containers"
    }


@pytest.mark.parametrize("name", ["cronjob.yaml", "migrate-job.yaml", "reconcile-cronjob.yaml"])
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


def test_backfill_slices_are_contiguous_months_after_start_date(tmp_path: Path) -> None:
    """The Indexed Job's shell, with the real `etl backfill-plan` and a stub `etl run` that prints its
    arguments, gives each completion index one [since, until) slice; the slices tile the plan without gaps,
    none before the ConfigMap's start_date (`etl run` refuses a window that can emit nothing) or in the
    future, and the plan has exactly `completions` slices."""
    (job,) = documents("backfill-indexed-job.yaml")
    assert job["spec"]["completionMode"] == "Indexed"
    (config,) = [d for d in documents("configmap.yaml") if d["kind"] == "ConfigMap"]
    (tmp_path / "jobs.yaml").write_text(config["data"]["jobs.yaml"], encoding="utf-8")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "etl"  # the image's console script: real for backfill-plan, an echo for run
    stub.write_text(
        "#!/bin/sh\n"
        'case " $* " in *" backfill-plan "*) '
        f"PYTHONPATH='{ROOT}' exec '{sys.executable}' -m etl \"$@\";; esac\n"
        'echo "$@"\n',
        encoding="utf-8",
    )
    stub.chmod(0o755)
    environ = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "ETL_CONFIG": str(tmp_path / "jobs.yaml"),
        "ETL_DATABASE_URL": "postgresql+psycopg://db/etl",  # the Secret's; backfill-plan never connects
    }
    (container,) = containers(job)
    script = container["args"][0]
    slices = []
    for index in range(job["spec"]["completions"]):
        out = subprocess.run(
            ["sh", "-c", script],
            env={**environ, "JOB_COMPLETION_INDEX": str(index)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        words = shlex.split(out)
        assert words[:4] == ["--log-format", "json", "run", "intercom_to_klaviyo"]
        slices.append((words[words.index("--since") + 1], words[words.index("--until") + 1]))
    assert slices[0][0] == "2026-01-01T00:00:00Z" and slices[-1][1] == "2026-07-01T00:00:00Z"
    assert all(a[1] == b[0] for a, b in itertools.pairwise(slices))
    # one past the last index is no slice: the pod fails with exit 2, which the Job does not retry
    beyond = subprocess.run(
        ["sh", "-c", script],
        env={**environ, "JOB_COMPLETION_INDEX": str(len(slices))},
        capture_output=True,
        text=True,
    )
    assert beyond.returncode == 2 and beyond.stdout == ""
    assert "the plan has 6 slices (0-5)" in beyond.stderr
    (rule,) = job["spec"]["podFailurePolicy"]["rules"]
    assert rule == {
        "action": "FailIndex",
        "onExitCodes": {"containerName": container["name"], "operator": "In", "values": [2]},
    }
    settings = parse_settings(
        config["data"]["jobs.yaml"], {"ETL_DATABASE_URL": "postgresql+psycopg://db/etl"}
    )
    start_date = settings.jobs["intercom_to_klaviyo"].start_date
    # the Klaviyo revision the job speaks (2026-07-15) is the earliest "now" the example can meet
    for since, until in slices:
        assert (
            start_date <= parse_timestamp(since) < parse_timestamp(until) <= datetime(2026, 7, 15, tzinfo=UTC)
        )


# -- Kubernetes ------------------------------------------------------------------------------------------
def kubernetes_validate() -> Any:
    """The validator (a dev dependency, with the schemas in its wheel: no network)."""
    import kubernetes_validate

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


# -- the README's cron section ---------------------------------------------------------------------------
JOB = "intercom_to_klaviyo"
ROOTED = ("/etc/etl/", "/opt/etl/", "/var/lib/etl/")  # the section's absolute paths, moved under tmp_path
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```$", re.MULTILINE | re.DOTALL)


def cron_blocks() -> list[tuple[str, str]]:
    """(language, text) of each fenced block of README's "Running from cron" section."""
    readme = README.read_text(encoding="utf-8")
    section = readme.split("### Running from cron\n", 1)[1].split("\n### ", 1)[0]
    return [(lang, textwrap.dedent(body)) for _, lang, body in FENCE.findall(section)]


def crontab_lines() -> tuple[dict[str, str], list[str]]:
    """The crontab blocks' environment settings and commands (what follows the five schedule fields)."""
    environment, commands = {}, []
    for lang, body in cron_blocks():
        for line in body.splitlines() if lang == "crontab" else []:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if re.match(r"^[A-Z_]+=", line):
                key, value = line.split("=", 1)
                environment[key] = value
                continue
            *schedule, command = line.split(None, 5)
            assert schedule == ["*/5", "*", "*", "*", "*"], line
            assert "%" not in command, "cron turns % into a newline"
            commands.append(command)
    return environment, commands


class CronHost:
    """The section's files under tmp_path (README paths moved there), and commands run as cron would: by
    `sh -c` with cron's minimal environment (no tokens), from the home directory, stdout and stderr together
    being what cron mails."""

    def __init__(self, tmp_path: Path, boxes: Sandboxes) -> None:
        self.tmp, self.home = tmp_path, tmp_path / "home"
        self.home.mkdir()
        self.database_url = f"sqlite:///{self.rooted('/var/lib/etl/state.db')}"
        Path(self.rooted("/var/lib/etl/")).mkdir(parents=True)
        # jobs.yaml names no token variable: the defaults are the env file's names
        self.write(
            "/etc/etl/jobs.yaml",
            f"database_url: {self.database_url}\njobs:\n  {JOB}:\n"
            f"    intercom: {{base_url: '{boxes.intercom.url}', per_page: 10}}\n"
            f"    klaviyo: {{base_url: '{boxes.klaviyo.url}'}}\n"
            f"    start_date: {START_DATE.isoformat()}\n",
        )
        # stands in for the console script pip installs into /opt/etl/bin
        self.write(
            "/opt/etl/bin/etl", f"#!/bin/sh\nPYTHONPATH='{ROOT}' exec '{sys.executable}' -m etl \"$@\"\n"
        )
        # the section's files, each named by its first comment line; the env file's "…" become the secrets
        secrets = {"INTERCOM_ACCESS_TOKEN": IC_TOKEN, "KLAVIYO_API_KEY": KL_KEY}
        files = {}
        for lang, body in cron_blocks():
            named = re.match(r"^(?:#!/bin/sh\n)?# (/\S+?):?\s", body)
            if lang == "sh" and named:
                files[named.group(1)] = body
        assert sorted(files) == ["/etc/etl/env", "/opt/etl/bin/etl-cron"]
        assert re.findall(r"^(\w+)=\w*…$", files["/etc/etl/env"], re.MULTILINE) == list(secrets)
        files["/etc/etl/env"] = re.sub(
            r"^(\w+)=\w*…$", lambda m: f"{m[1]}={secrets[m[1]]}", files["/etc/etl/env"], flags=re.MULTILINE
        )
        for path, body in files.items():
            self.write(path, self.rooted(body))
        os.chmod(self.rooted("/etc/etl/env"), 0o600)

    def rooted(self, text: str) -> str:
        for prefix in ROOTED:
            text = text.replace(prefix, f"{self.tmp}{prefix}")
        return text

    def write(self, path: str, text: str) -> None:
        target = Path(self.rooted(path))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        if text.startswith("#!"):
            target.chmod(0o755)

    def upgrade(self) -> None:
        """The README's one-off step before the crontab line: create the state database."""
        (command,) = [
            line.strip()
            for lang, body in cron_blocks()
            if lang == "sh"
            for line in body.splitlines()
            if line.strip().endswith(" db upgrade")
        ]
        assert self.run(command)[0] == 0

    def run(self, command: str) -> tuple[int, str]:
        """(exit code, mail) of one crontab command."""
        environ = {"HOME": str(self.home), "LOGNAME": "etl", "PATH": "/usr/bin:/bin", "SHELL": "/bin/sh"}
        done = subprocess.run(
            ["/bin/sh", "-c", self.rooted(command)],
            env=environ,
            cwd=self.home,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
        )
        return done.returncode, done.stdout


def test_readme_crontab_runs_quietly_from_home_with_the_tokens_of_the_env_file(tmp_path: Path) -> None:
    """Both crontab lines of the README, run as cron runs them, deliver to Klaviyo and print nothing (no mail)."""
    environment, commands = crontab_lines()
    assert environment == {"MAILTO": "ops@example.com"}
    assert len(commands) == 2 and all(
        f"--config /etc/etl/jobs.yaml --log-format text -q run {JOB}" in c for c in commands
    )
    with sandboxes() as boxes:
        host = CronHost(tmp_path, boxes)
        host.upgrade()
        assert host.run(commands[0]) == (0, "")
        assert len(boxes.klaviyo.events) > 0 and len(boxes.klaviyo.profiles) > 0
        assert host.run(commands[1]) == (0, "")
    store = StateStore(host.database_url)
    try:
        assert [(run.mode, run.status) for run in store.runs(JOB, 5)] == [("incremental", "succeeded")] * 2
    finally:
        store.close()
    assert sorted(p.name for p in host.home.iterdir()) == []  # nothing lands in cron's working directory


def test_readme_crontab_while_another_run_holds_the_lease(tmp_path: Path) -> None:
    """No flock needed: the plain line exits 75 at once with one line (mailed); the wrapper line mails nothing."""
    _, (plain, wrapped) = crontab_lines()
    with sandboxes() as boxes:
        host = CronHost(tmp_path, boxes)
        store = StateStore(host.database_url)
        try:
            store.upgrade()
            store.acquire_lock(JOB, "other-host:4711", timedelta(minutes=10), datetime.now(UTC))
            _, expires = store.lock_holder(JOB) or ("", datetime.now(UTC))
            assert host.run(plain) == (
                75,
                f"etl: error: job {JOB}: job '{JOB}' is already running (lease held by other-host:4711 until "
                f"{expires.isoformat()}); try again later\n",
            )
            assert host.run(wrapped) == (75, "")
            assert boxes.intercom.server.requests == [] and store.runs(JOB, 5) == []
        finally:
            store.close()


def test_readme_crontab_mails_a_rejection_with_its_summary(tmp_path: Path) -> None:
    """Items Klaviyo rejected (exit 6) are trouble: through the wrapper too, the mail holds the run's summary
    table and the line saying where to look."""
    _, (_, wrapped) = crontab_lines()
    with sandboxes(max_profile_bytes=4_000) as boxes:
        contact = next(c for c in boxes.workspace.contacts.values() if "@" in (c.get("email") or ""))
        contact["custom_attributes"]["notes"] = "n" * 5_000  # fits our 100 KB check, not this account's 4 KB
        host = CronHost(tmp_path, boxes)
        host.upgrade()
        code, mail = host.run(wrapped)
    assert code == 6
    lines = mail.splitlines()
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d warning Klaviyo rejected items  job=\S+ kind=profile rejected=1", lines[0]
    )
    assert lines[1] == f"job {JOB} (incremental)"
    assert (
        lines[-1]
        == f"etl: error: job {JOB}: Klaviyo rejected 1 item(s); see `etl outbox {JOB} --status failed`"
    )
    assert IC_TOKEN not in mail and KL_KEY not in mail


def test_the_dockerfile_passes_hadolint() -> None:
    """hadolint (a dev dependency: its wheel carries the binary) finds nothing to say about deploy/Dockerfile."""
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    """The check can fail: an unpinned base image and `cd` in RUN are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install etl\n")
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(bad)], capture_output=True, text=True)
    assert result.returncode == 1 and "DL3007" in result.stdout
