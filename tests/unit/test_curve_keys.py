"""CURVE key pairs by role: a role's keys serve only where that role may (the encrypted
cluster end to end: tests/test_curve.py)."""
import pytest
import zmq

from mpihub.protocol import curve

pytestmark = [pytest.mark.timeout(10), pytest.mark.skipif(not curve.available(), reason="this libzmq has no CURVE")]


def test_keys_that_cannot_serve_are_refused():
    keys = curve.ClusterKeys.new()
    context = zmq.Context()
    try:
        with pytest.raises(RuntimeError, match="no server secret"):
            keys.for_role("client").server(context.socket(zmq.ROUTER))
        with pytest.raises(ValueError, match="unknown role"):
            keys.for_role("login-node")
    finally:
        context.destroy(linger=0)
