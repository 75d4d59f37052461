"""The proxy environment is read once per host (requests reads it again for every request: ~7% of a sync's CPU)."""

from __future__ import annotations

import pytest

from etl.errors import IntercomError
from etl.sandbox.intercom_server import IntercomSandbox
from tests.intercom_fixtures import client

REFUSING_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens there, the connection is refused


@pytest.fixture(autouse=True)
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def test_a_proxy_in_the_environment_is_still_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """`http_proxy` set before the first request: the request goes through it (here: refused, so it fails)."""
    monkeypatch.setenv("http_proxy", REFUSING_PROXY)
    with (
        IntercomSandbox() as sb,
        client(sb) as c,
        pytest.raises(IntercomError, match=r"(?i)proxy|connect|refused"),
    ):
        c.admins()
    assert sb.server.requests == []  # nothing reached the server directly


def test_the_environment_is_read_once_per_host_not_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the first request, a changed environment changes nothing: the settings were kept, not re-read."""
    with IntercomSandbox() as sb, client(sb) as c:
        c.admins()
        monkeypatch.setenv("http_proxy", REFUSING_PROXY)
        c.tags()  # re-reading the environment would route this through the refusing proxy
        assert [path for _, path in sb.server.requests] == ["/admins", "/tags"]
