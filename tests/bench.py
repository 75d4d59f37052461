"""`make bench`: the real `etl` CLI, as a subprocess, against the sandbox in another process.

Not a test (timings are noisy on shared machines): it measures and prints a Markdown report, and with
`--out PATH` writes it there (docs/bench-results.md is the committed one). Per workspace size (~10k objects;
~100k with ETL_BENCH_LARGE=1, whose generation alone takes about a minute) and per state database (SQLite;
PostgreSQL in a throwaway cluster from tests/pg.py unless ETL_BENCH_POSTGRES=0; ETL_BENCH_SIZES and
ETL_BENCH_SQLITE=0 pick a subset), four runs of `etl run`:

- first sync: every object read and diffed for the first time, its history sent to Klaviyo;
- 1% changed: the workspace advanced by an hour with activity on ~1% of its objects (the generator's advance);
- no change: the same again, with nothing new;
- unchanged re-read: a backfill (`--since START_DATE --until T`, T the first sync's start) of the first sync's
  whole window, in which nothing changed since the runs before: every object read again and skipped as
  unchanged (the cost per unchanged object: issue 12's 30,000 per CPU-second).

Per run: objects per CPU-second of the `etl` process (user + system time from `os.wait4`, so only that
process), its peak RSS (`ru_maxrss`), API calls per 1,000 objects (the sandbox's own request counters), wall
time, and the APIs' bound: the least time the rate limits and latency allow for the calls the run made with
the job's `intercom.concurrency` (ETL_BENCH_CONCURRENCY, default 4) requests in flight. Intercom: the calls
times the latency over the concurrency, but never less than 6 ms a call (10,000 calls/min); Klaviyo's bulk
endpoints: 10/s and 150/min, or each call's latency if that is longer; other Klaviyo calls: their latency.
Reading and delivery overlap, so at best the run takes the longer of the two, which is the bound.
The sandbox adds ETL_BENCH_INTERCOM_LATENCY_MS (250) to every Intercom request and ETL_BENCH_KLAVIYO_LATENCY_MS
(150) to every Klaviyo request; the rate limits are the APIs' own. Also: `etl --help` wall time.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

INTERCOM_LATENCY = int(os.environ.get("ETL_BENCH_INTERCOM_LATENCY_MS", "250")) / 1000
KLAVIYO_LATENCY = int(os.environ.get("ETL_BENCH_KLAVIYO_LATENCY_MS", "150")) / 1000
CONCURRENCY = int(os.environ.get("ETL_BENCH_CONCURRENCY", "4"))  # the job's intercom.concurrency
INTERCOM_CALL_SECONDS = 60 / 10_000  # 10,000 calls/min per app
KLAVIYO_BURST, KLAVIYO_STEADY = 10, 150  # bulk endpoints: 10/s, 150/min
BULK_PATHS = ("/api/event-bulk-create-jobs", "/api/profile-bulk-import-jobs")
SIZES = {"10k": 33, "100k": 333}  # scale: 100 contacts, 150 conversations, 50 tickets each
TOKEN_ENV, KEY_ENV = "ETL_BENCH_INTERCOM_TOKEN", "ETL_BENCH_KLAVIYO_KEY"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"  # `--out`: what `make bench` rewrites
HISTORY = timedelta(days=3)  # the workspace's "now" starts this far back, so its advances stay in the past
CASES = ("first sync", "1% changed", "no change", "unchanged re-read")

JOBS_YAML = """\
database_url: {database_url}
jobs:
  bench:
    intercom: {{base_url: {intercom}, token_env: {token_env}, concurrency: {concurrency}}}
    klaviyo: {{base_url: {klaviyo}, api_key_env: {key_env}}}
    start_date: {start}
"""


# -- the sandbox process ---------------------------------------------------------------------------
def _serve(scale: int, conn: Connection) -> None:
    """Child process: both fake APIs; answers "counts", "advance" and "stop" on the pipe."""
    from etl.sandbox.generator import Workspace
    from etl.sandbox.intercom_server import IntercomSandbox
    from etl.sandbox.klaviyo_server import SANDBOX_API_KEY, KlaviyoServer
    from etl.sandbox.klaviyo_store import KlaviyoSettings

    start = datetime.now(UTC).replace(microsecond=0) - HISTORY
    ws = Workspace(seed=11, start=start, contacts=100 * scale, conversations=150 * scale, tickets=50 * scale)
    objects = len(ws.contacts) + len(ws.conversations) + len(ws.tickets)
    # import jobs complete quickly (their duration is Klaviyo's, not a rate limit); the limits are Klaviyo's
    with (
        IntercomSandbox(ws) as intercom,
        KlaviyoServer(KlaviyoSettings(queued_seconds=0.1, processing_seconds=0.2)) as klaviyo,
    ):
        intercom.faults.latency, klaviyo.faults.latency = INTERCOM_LATENCY, KLAVIYO_LATENCY
        conn.send((intercom.url, intercom.token, klaviyo.url, SANDBOX_API_KEY, objects, start.isoformat()))
        while True:
            command, arg = conn.recv()
            if command == "counts":
                bulk = sum(klaviyo.count("POST", p) for p in BULK_PATHS)
                conn.send(
                    {
                        "intercom": len(intercom.server.requests),
                        "klaviyo": len(klaviyo.requests),
                        "bulk": bulk,
                    }
                )
            elif command == "advance":
                conn.send(len(intercom.advance(timedelta(hours=1), activity=arg)))
            else:
                conn.send(None)
                return


@dataclass
class Sandbox:
    conn: Connection
    intercom: str
    token: str
    klaviyo: str
    key: str
    objects: int
    start: datetime

    def ask(self, command: str, arg: Any = None) -> Any:
        self.conn.send((command, arg))
        return self.conn.recv()


@contextmanager
def sandbox(scale: int) -> Iterator[Sandbox]:
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_serve, args=(scale, child), daemon=True)
    process.start()
    child.close()  # so a sandbox that dies shows here as EOFError, not as a wait forever
    intercom, token, klaviyo, key, objects, start = parent.recv()
    try:
        yield Sandbox(parent, intercom, token, klaviyo, key, objects, datetime.fromisoformat(start))
    finally:
        parent.send(("stop", None))
        parent.recv()
        process.join(timeout=10)


# -- the etl process -------------------------------------------------------------------------------
@dataclass
class Measured:
    wall: float
    cpu: float
    rss_mb: float
    code: int
    stderr: str


def run_etl(args: list[str], env: dict[str, str], folder: Path, python: tuple[str, ...] = ()) -> Measured:
    """Run `python [PYTHON] -m etl ARGS`; its own CPU time and peak RSS come from wait4 (only that process)."""
    err = folder / "stderr.txt"
    with open(os.devnull, "wb") as out, open(err, "wb") as errf:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, *python, "-m", "etl", *args], stdout=out, stderr=errf, env=env
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    return Measured(
        wall,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss / 1024,
        proc.returncode,
        err.read_text()[-2000:],
    )


def bound(calls: dict[str, int]) -> float:
    """The least seconds the APIs allow for these calls, `CONCURRENCY` Intercom requests in flight and
    reading overlapping delivery (see the module doc)."""
    intercom = max(
        calls["intercom"] * INTERCOM_LATENCY / CONCURRENCY, calls["intercom"] * INTERCOM_CALL_SECONDS
    )
    k = calls["bulk"]
    rate = max((k - 1) // KLAVIYO_BURST, 60 * ((k - 1) // KLAVIYO_STEADY)) if k else 0
    klaviyo = max(rate, k * KLAVIYO_LATENCY) + (calls["klaviyo"] - k) * KLAVIYO_LATENCY
    return max(intercom, klaviyo)


@dataclass
class Case:
    size: str
    database: str
    case: str
    objects: int
    measured: Measured
    calls: dict[str, int]

    def row(self) -> str:
        m, n = self.measured, max(self.objects, 1)
        per_k = (self.calls["intercom"] + self.calls["klaviyo"]) / n * 1000
        b = bound(self.calls)
        return (
            f"| {self.size} | {self.database} | {self.case} | {self.objects:,} | {self.objects / m.cpu:,.0f} | "
            f"{m.cpu:.2f} | {m.rss_mb:.0f} | {per_k:.1f} ({self.calls['intercom']} + {self.calls['klaviyo']}) | "
            f"{m.wall:.1f} | {b:.1f} | {m.wall / b if b else 0:.2f} |"
        )


def objects_read(env: dict[str, str], folder: Path, config: Path) -> int:
    """Objects the last run read, from `etl runs --json` (the run's own counts)."""
    out = subprocess.run(
        [sys.executable, "-m", "etl", "--config", str(config), "runs", "bench", "--limit", "1", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts = json.loads(out.splitlines()[0])["counts"] or {}
    return sum(
        int(c.get("objects", 0)) for s, c in counts.items() if isinstance(c, dict) and not s.startswith("_")
    )


def bench_size(size: str, databases: dict[str, str], profile: Path | None = None) -> list[Case]:
    """The four runs per database; with `profile`, each under cProfile (its stats in that folder)."""
    cases: list[Case] = []
    with sandbox(SIZES[size]) as sb:
        print(f"{size}: workspace of {sb.objects:,} objects served", file=sys.stderr, flush=True)
        for database, url in databases.items():
            folder = Path(tempfile.mkdtemp(prefix="etl-bench-"))
            db = url or f"sqlite:///{folder}/state.db"
            config = folder / "jobs.yaml"
            start = (sb.start - timedelta(days=90)).strftime("%Y-%m-%dT%H:%M:%SZ")
            config.write_text(
                JOBS_YAML.format(
                    database_url=db,
                    intercom=sb.intercom,
                    klaviyo=sb.klaviyo,
                    start=start,
                    token_env=TOKEN_ENV,
                    key_env=KEY_ENV,
                    concurrency=CONCURRENCY,
                )
            )
            env = {**os.environ, TOKEN_ENV: sb.token, KEY_ENV: sb.key}
            env.pop("ETL_DATABASE_URL", None)
            upgraded = run_etl(["--config", str(config), "db", "upgrade"], env, folder)
            if upgraded.code != 0:
                raise SystemExit(f"etl db upgrade failed: {upgraded.stderr}")
            first_sync = datetime.now(UTC).replace(microsecond=0)  # every object is older: see HISTORY
            for case in CASES:
                if case == "1% changed":
                    sb.ask("advance", max(sb.objects // 100, 1))
                window: list[str] = []
                if case == "unchanged re-read":
                    window = ["--since", start, "--until", first_sync.strftime("%Y-%m-%dT%H:%M:%SZ")]
                before = sb.ask("counts")
                python: tuple[str, ...] = ()
                if profile:
                    python = (
                        "-m",
                        "cProfile",
                        "-o",
                        str(profile / f"{database}-{case.replace(' ', '-')}.prof"),
                    )
                measured = run_etl(["--config", str(config), "-q", "run", *window], env, folder, python)
                after = sb.ask("counts")
                if measured.code != 0:
                    raise SystemExit(
                        f"etl run ({size}, {database}, {case}) exited {measured.code}: {measured.stderr}"
                    )
                calls = {k: after[k] - before[k] for k in after}
                result = Case(size, database, case, objects_read(env, folder, config), measured, calls)
                print(result.row(), file=sys.stderr, flush=True)
                cases.append(result)
    return cases


def startup() -> tuple[float, float]:
    """Median wall and CPU seconds of `python -m etl --help` over 7 runs."""
    walls, cpus = [], []
    folder = Path(tempfile.mkdtemp(prefix="etl-bench-"))
    for _ in range(7):
        m = run_etl(["--help"], dict(os.environ), folder)
        walls.append(m.wall)
        cpus.append(m.cpu)
    return statistics.median(walls), statistics.median(cpus)


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    return (
        f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {model}; Python {platform.python_version()}; "
        f"{platform.system()} {platform.release()}; {datetime.now(UTC):%Y-%m-%d}"
    )


def profile_report(folder: Path) -> str:
    """The functions with the most own time of each profiled run, and the share of JSON and SQL in it."""
    import cProfile  # noqa: F401  (the profiles were written by `python -m cProfile`)
    import pstats

    parts = []
    for path in sorted(folder.glob("*.prof")):
        stats = pstats.Stats(str(path))
        total = stats.total_tt  # type: ignore[attr-defined]
        rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)  # type: ignore[attr-defined]

        def share(*needles: str, rows: list[Any] = rows, total: float = total) -> float:
            return sum(v[2] for k, v in rows if any(n in k[0] or n in k[2] for n in needles)) / total

        parts.append(
            f"### {path.stem}: {total:.2f} s profiled; own time in json {share('json/', 'json.'):.0%}, "
            f"sqlalchemy {share('sqlalchemy'):.0%}, copy {share('copy.py'):.0%}\n\n"
            "| own s | cum s | calls | function |\n|---:|---:|---:|---|\n"
            + "\n".join(
                f"| {v[2]:.2f} | {v[3]:.2f} | {v[1]:,} | {Path(k[0]).name}:{k[1]} {k[2]} |"
                for k, v in rows[:20]
            )
        )
    return "\n\n".join(parts) + "\n"


def compile_etl() -> None:
    """Byte-compile etl's modules, as an installed etl has them: with PYTHONDONTWRITEBYTECODE set and a fresh
    clone, every measured run would compile them again (~0.1 CPU-s, a quarter of a run that finds nothing new)."""
    import compileall

    compileall.compile_dir(str(Path(__file__).resolve().parent.parent / "etl"), quiet=1)


def main() -> int:
    out = Path(sys.argv[sys.argv.index("--out") + 1]) if "--out" in sys.argv else None
    compile_etl()
    if "--profile" in sys.argv:  # cProfile of each run at 10k on SQLite: where the CPU goes
        folder = Path(sys.argv[sys.argv.index("--profile") + 1])
        folder.mkdir(parents=True, exist_ok=True)
        bench_size("10k", {"SQLite": ""}, profile=folder)
        print(profile_report(folder))
        return 0
    sizes = ["10k", "100k"] if os.environ.get("ETL_BENCH_LARGE") == "1" else ["10k"]
    # ETL_BENCH_SIZES=100k (or 10k,100k) picks sizes, ETL_BENCH_SQLITE=0 leaves SQLite out: separate
    # invocations can then measure the long cases side by side (each prints its own rows)
    sizes = [s for s in os.environ.get("ETL_BENCH_SIZES", ",".join(sizes)).split(",") if s in SIZES]
    help_wall, help_cpu = startup()
    cases: list[Case] = []
    with ExitStack() as stack:
        databases = {"SQLite": ""} if os.environ.get("ETL_BENCH_SQLITE", "1") != "0" else {}
        if os.environ.get("ETL_BENCH_POSTGRES", "1") != "0":
            from tests.pg import fresh_database, throwaway_server

            admin = stack.enter_context(throwaway_server())
            databases["PostgreSQL"] = stack.enter_context(fresh_database(admin))
        for size in sizes:
            if "PostgreSQL" in databases and size != sizes[0]:
                databases["PostgreSQL"] = stack.enter_context(fresh_database(admin))
            cases += bench_size(size, databases)
    lines = [
        f"Machine: {machine()}.",
        f"Sandbox latency: {INTERCOM_LATENCY * 1000:.0f} ms per Intercom request, {KLAVIYO_LATENCY * 1000:.0f} ms "
        "per Klaviyo request; rate limits the APIs' own (Intercom 10,000/min, Klaviyo bulk 10/s and 150/min); "
        f"`intercom.concurrency: {CONCURRENCY}`.",
        "",
        f"`etl --help`: {help_wall:.3f} s wall, {help_cpu:.3f} s CPU (median of 7).",
        "",
        "| size | database | run | objects | objects / CPU-s | CPU s | peak RSS MB | API calls / 1k objects "
        "(Intercom + Klaviyo calls) | wall s | APIs' bound s | wall / bound |",
        "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|",
        *(c.row() for c in cases),
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if out:  # replace the measured part only: the notes around the markers stay
        text = out.read_text() if out.exists() else f"{START}\n{END}\n"
        head, rest = text.split(START, 1)
        out.write_text(f"{head}{START}\n{report}{END}{rest.split(END, 1)[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
