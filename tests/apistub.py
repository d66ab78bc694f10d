"""A stand-in API server for the command line's unit tests: a loopback HTTP server that
answers GETs with the objects a test put there, and errors as the API server words
them (a ``Status`` with its message). The command line talks to it through the real
client, kubeconfig and error translation; the cluster tier runs it against the real one."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmms_operator.api import GROUP, VERSION

BASE = f"/apis/{GROUP}/{VERSION}"
PLURALS = {"EvalRun": "evalruns", "Leaderboard": "leaderboards"}


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class ApiStub:
    """``objects``: path -> the object, or a list of them answered one per GET (the last
    one stays); ``forbidden``: every GET is answered 403 as RBAC words it; ``crds``
    False: the API server does not know the resources (their CRDs are not installed)."""

    def __init__(self) -> None:
        self.objects: dict[str, Any] = {}
        self.forbidden = False
        self.crds = True
        self.gets: list[str] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code, body = stub.answer(self.path.split("?")[0])
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, path: str) -> tuple[int, Any]:
        self.gets.append(path)
        if self.forbidden:
            plural = path.rstrip("/").split("/")[-1]
            return 403, status(
                403,
                "Forbidden",
                f'{plural}.{GROUP} is forbidden: User "alice" cannot list resource '
                f'"{plural}" in API group "{GROUP}" in the namespace "team-a"',
            )
        if path.startswith(BASE) and not self.crds:
            return 404, status(404, "NotFound", "the server could not find the requested resource")
        found = self.objects.get(path)
        collection = path.startswith(BASE) and path.endswith(tuple(PLURALS.values()))
        if collection and self.crds:
            return 200, {"kind": "List", "items": found or []}
        if isinstance(found, list):
            return 200, found.pop(0) if len(found) > 1 else found[0]
        if found is not None:
            return 200, found
        parts = path.split("/")
        if len(parts) == 8 and parts[5] in PLURALS.values():  # a named object
            return 404, status(404, "NotFound", f'{parts[5]}.{GROUP} "{parts[7]}" not found')
        return 404, status(404, "NotFound", "the server could not find the requested resource")

    def put(self, obj: dict[str, Any], *states: dict[str, Any]) -> None:
        """An EvalRun or Leaderboard (with ``states``: what later GETs of it answer, in
        turn), also in its namespace's list and the list of all namespaces."""
        meta = obj["metadata"]
        plural = PLURALS[obj["kind"]]
        self.objects[f"{BASE}/namespaces/{meta['namespace']}/{plural}/{meta['name']}"] = [
            obj,
            *states,
        ]
        for collection in (f"{BASE}/namespaces/{meta['namespace']}/{plural}", f"{BASE}/{plural}"):
            self.objects.setdefault(collection, []).append(obj)

    def config_map(self, namespace: str, name: str, data: dict[str, str]) -> None:
        self.objects[f"/api/v1/namespaces/{namespace}/configmaps/{name}"] = {
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"},
            "data": data,
        }

    def kubeconfig(self, directory: Path, namespace: str = "team-a") -> Path:
        """A kubeconfig whose current context (``stub``, in ``namespace``) is this server;
        a second context, ``elsewhere``, names a port where nothing listens."""
        path = directory / "kubeconfig"
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {"name": "stub", "cluster": {"server": self.url}},
                        {"name": "none", "cluster": {"server": "http://127.0.0.1:9"}},
                    ],
                    "users": [{"name": "alice", "user": {"token": "t0ken"}}],
                    "contexts": [
                        {
                            "name": "stub",
                            "context": {"cluster": "stub", "user": "alice", "namespace": namespace},
                        },
                        {"name": "elsewhere", "context": {"cluster": "none", "user": "alice"}},
                    ],
                    "current-context": "stub",
                }
            )
        )
        return path


def serve() -> Iterator[ApiStub]:
    stub = ApiStub()
    try:
        yield stub
    finally:
        stub.close()
