"""The suite's throwaway PostgreSQL: a port taken between choosing and binding it costs a retry, not a run."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tests.pg import _binary, free_ports, throwaway_server


@pytest.mark.postgres
def test_throwaway_server_moves_to_a_fresh_port_when_the_chosen_one_is_taken() -> None:
    """The first port offered is already bound by someone else: the cluster starts on the next one."""
    if not _binary("initdb") and not os.environ.get("CI"):  # as conftest: a laptop without PostgreSQL skips
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) found")
    offered: list[int] = []

    def ports(first: int) -> Iterator[int]:
        offered.append(first)
        yield first
        for port in free_ports():
            offered.append(port)
            yield port

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        with throwaway_server(ports(taken)) as url:
            assert offered[0] == taken and len(offered) == 2  # one retry, on the second port offered
            assert sa.make_url(url).port == offered[1]
            engine = sa.create_engine(url)
            with engine.connect() as conn:
                assert conn.execute(sa.text("select 1")).scalar() == 1
            engine.dispose()
