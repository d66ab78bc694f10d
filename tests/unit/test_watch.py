"""The informer's loop (one function, the API server replaced by scripted answers):
an ERROR 410 in the stream or an HTTP 410 relists, other errors back off and resume
from the last resourceVersion, bookmarks move it without an event."""

from __future__ import annotations

import json
import threading
from typing import Any

from lmms_operator import errors
from lmms_operator.k8s.watch import Informer


class Answer:
    def __init__(self, data: Any = None, lines: list[dict[str, Any]] | None = None) -> None:
        self.data = json.dumps(data).encode() if data is not None else b""
        self.lines = lines or []

    def release_conn(self) -> None:
        pass

    def stream(self, amt: int, decode_content: bool = True) -> Any:
        body = b"".join(json.dumps(x).encode() + b"\n" for x in self.lines)
        yield body[:7]  # split mid-line: lines are reassembled
        yield body[7:]


def pod(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "a", "resourceVersion": rv}}


class Sink:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    def relisting(self, scope: str | None) -> None:
        pass

    def listed(self, scope: str | None, objects: list[dict[str, Any]], final: bool) -> None:
        self.seen.append(("list", [o["metadata"]["name"] for o in objects], final))

    def event(self, type_: str, obj: dict[str, Any]) -> None:
        self.seen.append((type_, obj["metadata"]["name"]))


def test_gone_relists_and_errors_resume_from_the_last_version() -> None:
    calls: list[dict[str, Any]] = []
    done = threading.Event()
    script: list[Any] = [
        Answer(
            {
                "kind": "PodList",
                "metadata": {"resourceVersion": "10", "continue": "c"},
                "items": [pod("a", "5")],
            }
        ),
        Answer(
            {"kind": "PodList", "metadata": {"resourceVersion": "10"}, "items": [pod("b", "6")]}
        ),
        Answer(
            lines=[
                {"type": "ADDED", "object": pod("c", "11")},
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}},
            ]
        ),
        errors.api_error(500, "boom"),
        Answer(
            lines=[
                {
                    "type": "ERROR",
                    "object": {
                        "kind": "Status",
                        "code": 410,
                        "message": "too old resource version",
                    },
                }
            ]
        ),
        Answer(
            {"kind": "PodList", "metadata": {"resourceVersion": "20"}, "items": [pod("c", "11")]}
        ),
        errors.api_error(410, "Gone"),
        Answer({"kind": "PodList", "metadata": {"resourceVersion": "30"}, "items": []}),
    ]

    def answer(method: str, path: str, *, query: dict[str, Any], timeout: Any) -> Any:
        assert (method, path) == ("GET", "/api/v1/pods")
        calls.append(dict(query))
        if not script:
            done.set()
            raise errors.api_error(503, "the end")
        nxt = script.pop(0)
        if isinstance(nxt, Exception):
            raise nxt
        return nxt

    sink = Sink()
    informer = Informer("Pod", sink, label_selector="x=y", fetch=answer)
    informer.BACKOFF_MIN = 0.01
    informer.start()
    assert done.wait(10)
    informer.stop()
    assert sink.seen == [
        ("list", ["a"], False),
        ("list", ["b"], True),
        ("ADDED", "c"),
        ("list", ["c"], True),  # after ERROR 410
        ("list", [], True),  # after HTTP 410
    ]
    watches = [c for c in calls if c.get("watch")]
    # After the 500, the watch resumed from the bookmark's version, not from the list's.
    assert [c["resourceVersion"] for c in watches] == ["10", "15", "15", "20", "30"]
    assert all(c["labelSelector"] == "x=y" for c in calls)
    assert all(c.get("allowWatchBookmarks") == "true" for c in watches)
    assert calls[1]["continue"] == "c"
    assert informer.relists == 3
