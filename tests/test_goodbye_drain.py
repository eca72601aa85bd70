"""After its goodbye the server keeps a client's stream open until the client hangs up.

A server that ended the stream, and then closed the connection, while the
client was still sending (a late reply) made the client's kernel reset the
connection and drop the goodbye it had not read yet: the client took the run's
end for a lost connection and retried for nothing.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from pathlib import Path

import grpc
import pytest

import covey

sys.path.insert(0, str(Path(__file__).parent))
from _live import Fit, Joined, Raw, Served

pytestmark = pytest.mark.timeout(120)


def test_the_stream_stays_open_after_the_goodbye_until_the_client_hangs_up() -> None:
    strategy = covey.FedAvg(min_available_clients=2, min_fit_clients=1, fraction_evaluate=0.0)
    served = Served(strategy, 1, round_timeout=2.0)
    raw = Raw(served.port)  # joins and never replies: round 1 closes without it
    trainer = Joined(served.port, Fit(), name="trainer")
    for message in raw.messages():
        if message.WhichOneof("body") == "goodbye":
            break
    else:
        raise AssertionError("the stream ended without a goodbye")
    ended = threading.Event()

    def drain() -> None:
        with contextlib.suppress(grpc.RpcError):  # how it ends: the goodbye was read
            for _ in raw.call:
                pass
        ended.set()

    threading.Thread(target=drain, daemon=True).start()
    # The client's side is still open (it could be sending a reply): so is the stream.
    assert not ended.wait(1.0)
    raw.finish()  # the client hangs up
    assert ended.wait(30)
    result = served.join()
    trainer.join()
    raw.close()
    assert len(result.history.rounds) == 2
    assert trainer.error is None
