"""The informer's loop (one function, the API server replaced by scripted answers):
an ERROR 410 in the stream or an HTTP 410 relists, other errors back off and resume
from the last resourceVersion, bookmarks move it without an event."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import pytest

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

    def undecodable(self, kind: str, meta: dict[str, Any], reason: str) -> None:
        self.seen.append(("undecodable", kind, meta["name"], reason))


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
        if done.is_set():  # retries after the end, before stop(): not recorded
            raise errors.api_error(503, "the end")
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


class RawAnswer(Answer):
    """An answer given as bytes: what ``json.dumps`` could not even write."""

    def __init__(self, data: bytes = b"", lines: list[bytes] | None = None) -> None:
        self.data, self.raw_lines = data, lines or []

    def stream(self, amt: int, decode_content: bool = True) -> Any:
        body = b"".join(line + b"\n" for line in self.raw_lines)
        for i in range(0, len(body), 4096):  # long lines arrive in many chunks
            yield body[i : i + 4096]


def _poisoned(name: str, rv: str, depth: int = 100_000) -> bytes:
    body = json.dumps(
        {"metadata": {"name": name, "namespace": "a", "uid": f"u-{name}", "resourceVersion": rv}}
    )
    deep = '{"x":' * depth + "1" + "}" * depth
    return (body[:-1] + ', "spec": {"affinity": ' + deep + "}}").encode()


def test_a_poisoned_object_is_skipped_and_reported_and_the_rest_arrives() -> None:
    items = b",".join([json.dumps(pod("a", "5")).encode(), _poisoned("deep", "6"), b"{}"])
    good = json.dumps({"type": "ADDED", "object": pod("c", "12")}).encode()
    script: list[Any] = [
        RawAnswer(
            b'{"kind": "PodList", "metadata": {"resourceVersion": "10"}, "items": ['
            + items.replace(b",{}", b"," + json.dumps(pod("b", "7")).encode())
            + b"]}"
        ),
        RawAnswer(
            lines=[
                b'{"type": "MODIFIED", "object": ' + _poisoned("deep", "11") + b"}",
                b"not json",
                good,
            ]
        ),
    ]
    done = threading.Event()
    versions: list[str] = []

    def answer(method: str, path: str, *, query: dict[str, Any], timeout: Any) -> Any:
        if done.is_set():  # retries after the end, before stop(): not recorded
            raise errors.api_error(503, "the end")
        if query.get("watch"):
            versions.append(query["resourceVersion"])
        if not script:
            done.set()
            raise errors.api_error(503, "the end")
        return script.pop(0)

    sink = Sink()
    informer = Informer("Pod", sink, fetch=answer)
    informer.BACKOFF_MIN = 0.01
    informer.start()
    assert done.wait(30)
    informer.stop()
    reason = "spec.affinity.x: nested too deeply to decode"
    assert sink.seen == [
        ("undecodable", "Pod", "deep", reason),
        ("list", ["a", "b"], True),
        ("undecodable", "Pod", "deep", reason),
        ("ADDED", "c"),
    ]
    # The watch resumed after the last event, past the poisoned one.
    assert versions == ["10", "12"]


class FailingSink(Sink):
    """A sink that fails on the object named ``bad`` (in an event) and on a page that
    holds it: what a bug in the sink for one object does."""

    def listed(self, scope: str | None, objects: list[dict[str, Any]], final: bool) -> None:
        if any(o["metadata"]["name"] == "bad" for o in objects):
            raise RuntimeError("secret-content-of-bad")
        super().listed(scope, objects, final)

    def event(self, type_: str, obj: dict[str, Any]) -> None:
        if obj["metadata"]["name"] == "bad":
            raise RuntimeError("secret-content-of-bad")
        super().event(type_, obj)


def test_a_sink_that_fails_on_one_object_does_not_replay_it_for_ever(
    caplog: pytest.LogCaptureFixture,
) -> None:
    script: list[Any] = [
        Answer(
            {
                "kind": "PodList",
                "metadata": {"resourceVersion": "10", "continue": "c"},
                "items": [pod("bad", "5")],
            }
        ),
        Answer(
            {"kind": "PodList", "metadata": {"resourceVersion": "10"}, "items": [pod("a", "6")]}
        ),
        Answer(
            lines=[
                {"type": "ADDED", "object": pod("bad", "11")},
                {"type": "ADDED", "object": pod("b", "12")},
            ]
        ),
        Answer(lines=[{"type": "MODIFIED", "object": pod("b", "13")}]),
    ]
    done = threading.Event()
    versions: list[str] = []
    lists = 0

    def answer(method: str, path: str, *, query: dict[str, Any], timeout: Any) -> Any:
        nonlocal lists
        if done.is_set():  # retries after the end, before stop(): not recorded
            raise errors.api_error(503, "the end")
        if query.get("watch"):
            versions.append(query["resourceVersion"])
        else:
            lists += 1
        if not script:
            done.set()
            raise errors.api_error(503, "the end")
        return script.pop(0)

    sink = FailingSink()
    informer = Informer("Pod", sink, fetch=answer)
    informer.BACKOFF_MIN = 0.01
    with caplog.at_level(logging.DEBUG, logger="lmms.watch"):
        informer.start()
        assert done.wait(10)
        informer.stop()
    # The failing page and event were passed over; what came after them arrived once.
    assert sink.seen == [("list", ["a"], True), ("ADDED", "b"), ("MODIFIED", "b")]
    assert lists == 2  # no relist
    assert versions == ["10", "12", "13"]  # past the failing event, never back to it
    failures = [r for r in caplog.records if "the sink failed" in r.getMessage()]
    assert [r.getMessage().split(" on ")[1].split(":")[0] for r in failures] == [
        "a page ?/? (uid ?)",
        "ADDED a/bad (uid ?)",
    ]
    assert not any("secret-content" in r.getMessage() for r in caplog.records)
