"""The shared HTTP policy (etl.http): header arithmetic, redaction, caps and giving up, over real loopback HTTP."""

from __future__ import annotations

import pytest

from etl.errors import IntercomError
from etl.http import MAX_ATTEMPTS, MAX_WAIT_SECONDS, HttpClient, budget_spent, redact, reset_wait
from tests.intercom_fixtures import FakeTime, sandbox

NOW = 1_772_366_403.0


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"Retry-After": "4", "X-RateLimit-Reset": str(int(NOW) + 50)}, 4.0),  # Retry-After wins
        ({"X-RateLimit-Reset": str(int(NOW) + 7)}, 7.0),  # Intercom: a UNIX time
        ({"RateLimit-Reset": "12"}, 12.0),  # Klaviyo: seconds left
        ({"X-RateLimit-Reset": str(int(NOW) - 5)}, 0.0),  # a reset in the past means go now
        ({"X-RateLimit-Reset": "soon"}, None),
        ({}, None),
    ],
)
def test_reset_wait_reads_both_header_families(headers: dict[str, str], wait: float | None) -> None:
    """Seconds to wait come from Retry-After, else the epoch or delta reset; unknown stays None."""
    assert reset_wait(headers, NOW) == wait


def test_budget_spent_and_redact() -> None:
    """A zero remaining budget is spotted in either family, and secrets are masked wherever they occur."""
    assert budget_spent({"X-RateLimit-Remaining": "0"}) and budget_spent({"RateLimit-Remaining": "0"})
    assert not budget_spent({"X-RateLimit-Remaining": "3"}) and not budget_spent({})
    assert redact("Bearer abc and abc", ["abc", ""]) == "Bearer *** and ***"


def _intercom_http(url: str, token: str, fake: FakeTime) -> HttpClient:
    return HttpClient(
        service="Intercom",
        base_url=url,
        headers={"Authorization": f"Bearer {token}"},
        error_class=IntercomError,
        secret_env="INTERCOM_ACCESS_TOKEN",
        secrets=(token,),
        sleep=fake.sleep,
        clock=fake.clock,
    )


def test_a_far_reset_is_capped_at_the_longest_wait() -> None:
    """A 429 whose reset lies twenty minutes away is waited for at most MAX_WAIT_SECONDS at a time."""
    fake = FakeTime(NOW)
    with sandbox(clock=lambda: NOW + 1_200) as sb:
        http = _intercom_http(sb.url, sb.token, fake)
        sb.faults.storm_requests = 1
        assert http.request("GET", "/tags").status == 200
        http.close()
    assert fake.waits[0] == MAX_WAIT_SECONDS  # the retry's wait; pacing may add more, each one capped
    assert max(fake.waits) == MAX_WAIT_SECONDS


def test_a_storm_longer_than_the_attempts_gives_up_with_one_line() -> None:
    """After MAX_ATTEMPTS throttled tries the caller's error says what kept failing and what to do."""
    fake = FakeTime(NOW)
    with sandbox(clock=fake.clock) as sb:
        http = _intercom_http(sb.url, sb.token, fake)
        sb.faults.storm_requests = MAX_ATTEMPTS
        with pytest.raises(IntercomError) as caught:
            http.request("GET", "/tags")
        http.close()
    assert str(caught.value) == (
        f"Intercom kept failing GET /tags: 429 rate limited after {MAX_ATTEMPTS} attempts; try again later"
    )
    assert caught.value.exit_code == 3
    assert len(fake.waits) == MAX_ATTEMPTS - 1
