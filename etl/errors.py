"""The error tree. Each class carries the exit code of docs/design.md §3.1; the CLI maps them in one place.

Messages are one line: what failed and what to do. They never contain a secret.
"""

from __future__ import annotations

import signal


class EtlError(Exception):
    """Root of every error the job reports to its user."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(EtlError):
    """jobs.yaml, the environment or the command line is wrong; every problem is in one message."""

    exit_code = 2

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = f"{len(self.problems)} problems: " + "; ".join(self.problems)
        super().__init__(message)


class UsageError(EtlError):
    """The command was called wrongly (bad flag value, unknown job)."""

    exit_code = 2


class IntercomError(EtlError):
    """Intercom refused or kept failing a request."""

    exit_code = 3


class KlaviyoError(EtlError):
    """Klaviyo refused or kept failing a request."""

    exit_code = 4


class StateError(EtlError):
    """The state database cannot be reached, is behind its migrations, or failed a statement."""

    exit_code = 5


class ItemsRejected(EtlError):
    """The run finished, but Klaviyo rejected some items (see `etl outbox --status failed`)."""

    exit_code = 6


class OutOfStep(EtlError):
    """`etl reconcile` found differences between Intercom, the state, the outbox and Klaviyo (listed)."""

    exit_code = 7


class LockHeld(EtlError):
    """Another run of the same job holds the lease; cron can simply try again (EX_TEMPFAIL)."""

    exit_code = 75


class Interrupted(KeyboardInterrupt):
    """A stop signal raised in the main thread: SIGTERM (Kubernetes stopping a pod) by the handler `etl run`
    installs, SIGINT (Ctrl-C) as Python's own KeyboardInterrupt (`of` names it). A KeyboardInterrupt, so the
    run unwinds the same way for both: recorded as failed, its lease released. The exit code is 128 + the
    signal's number (130, 143), as a shell reports a process that signal ended."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        self.signal = signal.Signals(signum)
        super().__init__(self.signal.name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signal.value

    @classmethod
    def of(cls, exc: KeyboardInterrupt) -> Interrupted:
        return exc if isinstance(exc, Interrupted) else cls(signal.SIGINT)

    def __str__(self) -> str:
        return f"interrupted by {self.signal.name}"


# Exit codes by severity, for a command over several jobs: the worst one wins. A job found out of step (7)
# outranks one that could not start for the lease (75): the one needs a look, the other only a retry.
SEVERITY = {0: 0, 6: 1, 75: 2, 7: 3, 4: 4, 3: 5, 5: 6, 2: 7, 1: 8}


def worst_exit_code(codes: list[int]) -> int:
    """The exit code that reports the worst outcome among several jobs (0 when all succeeded)."""
    return max(codes, key=lambda c: SEVERITY.get(c, max(SEVERITY.values())), default=0)
