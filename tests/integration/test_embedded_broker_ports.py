"""The embedded broker on a port taken between ``free_port`` choosing it and tansu binding it (a race of parallel
test workers, seen in `make test`): tansu panics and never answers, so ``wait_ready`` moves a broker on a port it
chose to another free port; a port the caller gave is kept, and the wait fails. A real tansu and a real listener."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from libs.common.broker import EmbeddedBroker, wait_for_broker


@pytest.fixture
def squatter() -> Iterator[socket.socket]:
    """A socket listening on a port, as another process holding it."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held


async def test_a_chosen_port_taken_before_tansu_binds_it_moves_the_broker_to_another(squatter, tmp_path):
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log")
    taken = squatter.getsockname()[1]
    broker.port = taken  # what free_port returned, taken again before the start
    broker.start()
    try:
        await broker.wait_ready(bind_seconds=2.0)
        assert broker.port != taken
        await wait_for_broker(broker.bootstrap_servers, 5.0)
        assert "Address in use" in (tmp_path / "tansu.log").read_text()
    finally:
        broker.stop()


async def test_a_port_given_by_the_caller_is_kept_and_the_wait_fails(squatter, tmp_path):
    taken = squatter.getsockname()[1]
    broker = EmbeddedBroker(taken, log_path=tmp_path / "tansu.log")
    broker.start()
    try:
        with pytest.raises((TimeoutError, RuntimeError)):
            await broker.wait_ready(3.0)
        assert broker.port == taken
    finally:
        broker.stop()
