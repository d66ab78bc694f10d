"""The informer through repeated API server outages: each outage's backoff starts over
once the API server has answered, so that an informer does not stay blind for up to
BACKOFF_MAX after the API server is back (the API server replaced by scripted answers;
the waits recorded, not slept)."""

from __future__ import annotations

import threading
from typing import Any

from lmms_operator import errors
from lmms_operator.k8s.watch import Informer
from tests.unit.test_watch import Answer, Sink


class RecordedStop(threading.Event):
    """The informer's stop event: its backoff waits are recorded and return at once."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is None:
            return super().wait()
        self.waits.append(timeout)
        return self.is_set()


class Broken(Answer):
    """A watch that is cut (the API server went away) after its first event."""

    def stream(self, amt: int, decode_content: bool = True) -> Any:
        yield from super().stream(amt, decode_content)
        raise errors.Unavailable("the API server did not answer: ProtocolError")


def test_each_outage_backs_off_from_the_start() -> None:
    down = errors.Unavailable("the API server did not answer: MaxRetryError")
    listed = Answer({"kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": []})
    event = {"type": "ADDED", "object": {"metadata": {"name": "p", "resourceVersion": "2"}}}
    done = threading.Event()
    # A long outage, the API server back (a list, a watch), and a second outage.
    script: list[Any] = [down] * 6 + [listed, Broken(lines=[event])] + [down] * 3

    def answer(method: str, path: str, *, query: dict[str, Any], timeout: Any) -> Any:
        if not script:
            done.set()
            raise down
        nxt = script.pop(0)
        if isinstance(nxt, Exception):
            raise nxt
        return nxt

    informer = Informer("Pod", Sink(), fetch=answer)
    informer.BACKOFF_MIN, informer.BACKOFF_MAX = 1.0, 30.0
    stop = RecordedStop()
    informer._stop = stop
    informer.start()
    assert done.wait(10)
    stop.set()
    informer.join(5)
    first, second = stop.waits[:6], stop.waits[6:9]
    # Within one outage the waits grow (1, 2, 4, ... up to BACKOFF_MAX, each with +-50%
    # jitter)...
    base = [min(2.0**i, informer.BACKOFF_MAX) for i in range(6)]
    assert all(0.5 * b <= w <= 1.5 * b for b, w in zip(base, first, strict=False)), first
    # ...and the next outage starts over from BACKOFF_MIN, not from the 30 s reached.
    assert all(0.5 * b <= w <= 1.5 * b for b, w in zip(base, second, strict=False)), second
