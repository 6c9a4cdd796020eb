"""The client's hello: a controller may coalesce its answer with other notices into
one batch message, and nothing in that batch may be lost."""
import threading

import pytest
import zmq

from mpihub.client.core import ClientCore
from mpihub.protocol import wire
from mpihub.protocol.schema import EVENT_REGISTERED, Key, Msg

SIGNER = wire.Signer("connect-test-key")


def answer_hello_in_one_batch(router: zmq.Socket, done: threading.Event) -> None:
    """Act as a controller: answer the hello with a batch of [the connect reply (no
    engines), an engine registered meanwhile], then swallow whatever else comes."""
    ident, *frames = router.recv_multipart()
    hello = wire.unpack(SIGNER, frames)
    assert hello.type == Msg.CONNECT
    reply = wire.pack(SIGNER, {Key.TYPE: Msg.CONNECT_REPLY, Key.REQUEST_ID: hello.header[Key.REQUEST_ID],
                               Key.ENGINES: [], Key.SCHEDULER: "lru"})
    registered = wire.pack(SIGNER, {Key.TYPE: Msg.NOTIFY, Key.EVENT: EVENT_REGISTERED,
                                    Key.ENGINE: {"id": 7, "uuid": "ab" * 8, "registered": 0.0}})
    router.send_multipart([ident, *wire.batch(SIGNER, [reply, registered])])
    while not done.is_set():
        if router.poll(50):
            router.recv_multipart()


@pytest.mark.timeout(20)
def test_an_engine_registered_in_the_batch_with_the_connect_reply_is_seen():
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    done = threading.Event()
    controller = threading.Thread(target=answer_hello_in_one_batch, args=(router, done))
    controller.start()
    core = None
    try:
        core = ClientCore({"key": "connect-test-key", "client": f"tcp://127.0.0.1:{port}"}, 5.0, context)
        assert list(core.engines) == [7]
    finally:
        if core is not None:
            core.close()
        done.set()
        controller.join(5)
        router.close()
        context.term()
