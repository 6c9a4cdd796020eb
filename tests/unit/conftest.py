"""Fixtures of the unit tests: they start no cluster."""
import pytest
import zmq


@pytest.fixture
def context():
    """A ZMQ context of the test's own, destroyed after it with whatever sockets it holds."""
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)
