"""The runner's view of a model server (an engine sidecar or spec.model.endpoint):
readiness, the served model's id, and the openai backend's arguments."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmms_runner import served
from lmms_runner.config import ConfigError

KEY = "sk-served-secret-0123456789"


class _Handler(http.server.BaseHTTPRequestHandler):
    answers: ClassVar[list[tuple[int, bytes]]] = []
    seen: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        code, body = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        self.send_response(code)
        if code == 302:
            self.send_header("Location", "http://127.0.0.2:9/elsewhere")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("H", (_Handler,), {"answers": [], "seen": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", handler
    httpd.shutdown()


def _models(*ids: str) -> bytes:
    return json.dumps(
        {"object": "list", "data": [{"id": i, "object": "model"} for i in ids]}
    ).encode()


def test_it_waits_until_the_server_lists_a_model_and_sends_the_key(
    server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, handler = server
    handler.answers = [
        (503, b"loading"),
        (200, _models()),
        (200, _models("Qwen/Qwen2-VL-72B", "b")),
    ]
    heard: list[str] = []
    ms = served.ModelServer(url, wait_seconds=60, api_key=KEY)
    monkeypatch.setattr(served, "POLL_SECONDS", 0.01)
    model = ms.wait(heard.append, threading.Event())
    assert model == "Qwen/Qwen2-VL-72B"
    assert len(heard) == 2
    assert "503" in heard[0] and "lists no model" in heard[1]
    assert handler.seen == [f"Bearer {KEY}"] * 3
    assert all(KEY not in h for h in heard)


def test_a_server_that_never_answers_ends_the_wait_with_model_not_ready(server: Any) -> None:
    url, handler = server
    handler.answers = [(500, b"no")]
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0
        return now[0]

    ms = served.ModelServer(url, wait_seconds=5)
    with pytest.raises(served.ServedError) as err:
        ms.wait(lambda _m: None, threading.Event(), clock=clock)
    assert err.value.reason == "ModelNotReady"
    assert "not ready after 5 s" in str(err.value)


def test_stopping_ends_the_wait(server: Any) -> None:
    url, handler = server
    handler.answers = [(503, b"")]
    stop = threading.Event()
    stop.set()
    with pytest.raises(served.ServedError, match="stopped"):
        served.ModelServer(url, wait_seconds=60).wait(lambda _m: None, stop)


def test_a_redirect_is_not_followed_so_the_key_stays_with_the_server(server: Any) -> None:
    url, handler = server
    handler.answers = [(302, b"")]
    with pytest.raises(served.ServedError, match="answered 302"):
        served.ModelServer(url, api_key=KEY).model_ids()


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"data": 3}',
        b'{"data": [{"name": "x"}]}',
        b"[1, 2]",
        b" " * (served.MAX_ANSWER + 1),
    ],
)
def test_answers_that_are_no_model_list_are_not_ready(server: Any, body: bytes) -> None:
    url, handler = server
    handler.answers = [(200, body)]
    with pytest.raises(served.ServedError) as err:
        served.ModelServer(url).model_ids()
    assert err.value.reason == "ModelNotReady"


@pytest.mark.parametrize("bad", ["a,b", "m=1", "x y", "q'", "a[0]", "", "\u202egpt", "x" * 513])
def test_a_served_id_that_model_args_cannot_carry_fails_the_run(server: Any, bad: str) -> None:
    url, handler = server
    handler.answers = [(200, _models(bad))]
    with pytest.raises(served.ServedError) as err:
        served.ModelServer(url, wait_seconds=1).wait(lambda _m: None, threading.Event())
    assert err.value.reason == "EvaluationFailed"
    assert "cannot be passed to lmms-eval" in str(err.value)


@given(st.text(max_size=600))
def test_every_accepted_id_keeps_one_meaning_in_model_args(model_id: str) -> None:
    try:
        ok = served.checked_id(model_id)
    except served.ServedError:
        return
    assert ok == model_id
    assert not set(ok) & set(",=\"'[]{}() \t\r\n")
    args = served.model_args(served.ModelServer("http://m:8000/v1"), ok, {})
    assert [p.split("=", 1) for p in ",".join(f"{k}={v}" for k, v in args.items()).split(",")] == [
        ["base_url", "http://m:8000/v1"],
        ["model_version", ok],
    ]


def test_the_users_args_win_and_pretrained_is_dropped() -> None:
    ms = served.ModelServer("http://127.0.0.1:8000/v1")
    args = served.model_args(
        ms, "served-id", {"pretrained": "Qwen/X", "num_concurrent": "8", "model_version": "mine"}
    )
    assert args == {
        "base_url": "http://127.0.0.1:8000/v1",
        "model_version": "mine",
        "num_concurrent": "8",
    }


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LMMS_MODEL_URL": "ftp://x/v1"}, r"http\(s\) URL"),
        ({"LMMS_MODEL_URL": "http://user:pw@x/v1"}, "credentials"),
        ({"LMMS_MODEL_URL": "http://x/v1?key=1"}, "query"),
        (
            {"LMMS_MODEL_URL": "http://x/v1", "LMMS_MODEL_WAIT_SECONDS": "soon"},
            "LMMS_MODEL_WAIT_SECONDS",
        ),
    ],
)
def test_a_bad_model_url_is_a_configuration_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        served.ModelServer.from_env(env)


def test_from_env() -> None:
    assert served.ModelServer.from_env({}) is None
    ms = served.ModelServer.from_env(
        {
            "LMMS_MODEL_URL": "http://127.0.0.1:8000/v1/",
            "LMMS_MODEL_WAIT_SECONDS": "30",
            "OPENAI_API_KEY": KEY,
        }
    )
    assert ms == served.ModelServer("http://127.0.0.1:8000/v1", 30.0, KEY)
