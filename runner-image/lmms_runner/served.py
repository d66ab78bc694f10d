"""The model server a run evaluates when the model is served, not loaded by lmms-eval.

The operator names it with ``LMMS_MODEL_URL``: an OpenAI-compatible base URL ending in
``/v1``, either the engine sidecar in the pod (``http://127.0.0.1:8000/v1``) or the
endpoint it resolved from ``spec.model.endpoint``. Before lmms-eval starts the runner waits
until ``GET <url>/models`` answers (the phase is ``loading`` meanwhile), takes the served
model's id from it, and evaluates through lmms-eval's ``openai`` backend with
``base_url=<url>,model_version=<id>`` (arguments the user gave win). The key, when there
is one, is ``OPENAI_API_KEY``; it only ever travels in the Authorization header.

Nothing the server says is trusted: the answer is read up to a bound, and a model id that
``--model_args`` could not carry with one meaning (``,`` ``=`` quotes, brackets, spaces,
control characters) is refused.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from lmms_operator.api.endpointid import SERVED_ID
from lmms_operator.api.runner import MODEL_NOT_READY

from .config import ConfigError

#: The longest answer of ``/models`` the runner reads.
MAX_ANSWER = 1 << 20
#: A served model id that lmms-eval's --model_args splitter keeps whole (the operator's
#: rule too: it names no model by another).
MODEL_ID = SERVED_ID
DEFAULT_WAIT_SECONDS = 600.0
#: Seconds between two readiness checks, and the limit of one.
POLL_SECONDS = 2.0
REQUEST_TIMEOUT = 10.0


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not a new address: the key is never sent elsewhere."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects())


class ServedError(Exception):
    """The model server cannot be used (yet): ``reason`` names why, for the run's status."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ModelServer:
    #: The base URL (``.../v1``), never with credentials in it.
    url: str
    wait_seconds: float = DEFAULT_WAIT_SECONDS
    api_key: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ModelServer | None:
        """The server the operator named, or None for a model lmms-eval loads itself."""
        raw = (env.get("LMMS_MODEL_URL") or "").strip()
        if not raw:
            return None
        parsed = urllib.parse.urlsplit(raw)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError(f"LMMS_MODEL_URL: expected an http(s) URL, got {raw!r}")
        if parsed.username or parsed.password or parsed.query or parsed.fragment:
            raise ConfigError(
                "LMMS_MODEL_URL: may not carry credentials, a query or a fragment "
                "(the key goes in OPENAI_API_KEY)"
            )
        wait = env.get("LMMS_MODEL_WAIT_SECONDS") or ""
        try:
            seconds = float(wait) if wait.strip() else DEFAULT_WAIT_SECONDS
        except ValueError:
            raise ConfigError(f"LMMS_MODEL_WAIT_SECONDS: expected seconds, got {wait!r}") from None
        return cls(raw.rstrip("/"), max(seconds, 0.0), env.get("OPENAI_API_KEY") or None)

    def model_ids(self, timeout: float = REQUEST_TIMEOUT) -> list[str]:
        """The ids ``GET <url>/models`` lists; ServedError when it does not answer 200
        with an OpenAI model list."""
        request = urllib.request.Request(
            self.url + "/models", headers={"Accept": "application/json"}
        )
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with _OPENER.open(request, timeout=timeout) as answer:
                body = answer.read(MAX_ANSWER + 1)
        except urllib.error.HTTPError as exc:
            raise ServedError(MODEL_NOT_READY, f"{self.url}/models answered {exc.code}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServedError(MODEL_NOT_READY, f"{self.url}/models: {reason}") from None
        if len(body) > MAX_ANSWER:
            raise ServedError(MODEL_NOT_READY, f"{self.url}/models: the answer exceeds 1 MiB")
        try:
            data = json.loads(body)
            ids = [str(m["id"]) for m in data["data"]]
        except (ValueError, KeyError, TypeError):
            raise ServedError(
                MODEL_NOT_READY, f"{self.url}/models: not an OpenAI model list"
            ) from None
        return ids

    def wait(
        self,
        on_wait: Callable[[str], None],
        stopping: threading.Event,
        clock: Callable[[], float] = time.monotonic,
    ) -> str:
        """Waits until the server lists a model, and returns the first model's id.
        ``on_wait`` hears why it is not ready yet; ServedError when the wait ends without
        one (after ``wait_seconds``, or when ``stopping`` is set)."""
        deadline = clock() + self.wait_seconds
        while True:
            try:
                ids = self.model_ids()
                if not ids:
                    raise ServedError(MODEL_NOT_READY, f"{self.url}/models lists no model yet")
                return checked_id(ids[0])
            except ServedError as exc:
                if exc.reason != MODEL_NOT_READY:
                    raise
                if clock() >= deadline:
                    raise ServedError(
                        MODEL_NOT_READY,
                        f"the model server at {self.url} was not ready after "
                        f"{self.wait_seconds:.0f} s: {exc}",
                    ) from None
                on_wait(f"waiting for the model server at {self.url}: {exc}")
            if stopping.wait(POLL_SECONDS):
                raise ServedError(MODEL_NOT_READY, "stopped while waiting for the model server")


def checked_id(model_id: str) -> str:
    """A served model id --model_args can carry with one meaning, or ServedError."""
    if not MODEL_ID.fullmatch(model_id):  # (match: "$" also matches before a final "\n")
        shown = json.dumps(model_id[:80])
        raise ServedError(
            "EvaluationFailed",
            f"the model server serves a model id that cannot be passed to lmms-eval: {shown} "
            "(expected letters, digits and _ . / : @ + -, at most 512)",
        )
    return model_id


def model_args(server: ModelServer, model_id: str, given: Mapping[str, str]) -> dict[str, str]:
    """The openai backend's --model_args for ``server``: its URL and the served id first,
    then what the user gave (which wins), without ``pretrained`` (the checkpoint the
    engine serves; lmms-eval's openai backend takes no such argument)."""
    args = {"base_url": server.url, "model_version": model_id}
    args.update({k: v for k, v in given.items() if k != "pretrained"})
    return args
