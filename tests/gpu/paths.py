"""The GPU script's evaluation paths (``check.sh`` runs this), each a real
``lmms-runner`` run of real lmms-eval 0.7.3 on a tiny random-weight Qwen2-VL
(``tiny_qwen2vl.py``) and a local 32-image task (``tests/fixtures/colortask.py``):

- ``hf``: the Hugging Face backend (``qwen2_vl``) on one device, ``lmms-runner --config``;
- ``mp``: model parallel (``spec.model.multiGPU: ModelParallel``, 2 GPUs declared): one
  process with ``device_map=auto``. On one GPU this proves the command, not the split;
- ``engine``: the Job the operator renders (``reconcile/job.py`` ``build``) for
  ``spec.model.engine: vllm``: the runner container's command and environment run here,
  and an OpenAI-compatible server (``transformers serve``, else ``chat_server.py``) stands
  in for the engine container, started only once the runner has asked for it at
  ``$LMMS_MODEL_URL``;
- ``served``: ``spec.model.endpoint.url``: the runner against that same server;
- ``openai-args``: the ``openai`` backend with ``base_url`` in ``spec.model.args`` (needs
  nothing of issue 32: it shows the server and the backend work when the two above
  are skipped).

Each path prints one line ``PASS|FAIL|SKIP <path> ...`` with its samples/s (the 32
samples over lmms-eval's own evaluation time, and over the runner's wall time); SKIP
means this build lacks what the path needs (a field, the engine container, the runner's
served-model support) and says which. The figures go to ``$OUT/gpu-paths.json`` when
``OUT`` is set. Exit status: 1 if any path failed.

    python tests/gpu/paths.py --device cuda --work DIR [--paths hf,engine] [--budget 420]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = 32
TASK = "colors"
TASKS_CONFIG_MAP = "colors-task"
PATHS = ("hf", "mp", "engine", "served", "openai-args")
WAIT_MESSAGE = "waiting for the model server"


class Skip(Exception):
    """This build lacks what the path needs."""


class Fail(Exception):
    """The path ran and did not do what it must."""


def manifest(name: str, model: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "eval.lmms.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}"},
        "spec": {
            "model": model,
            "customTasks": [{"configMap": TASKS_CONFIG_MAP, "tasks": [TASK]}],
            "evaluation": {"batchSize": 4, "seed": 7},
            **spec,
        },
    }


def require(doc: dict[str, Any], *fields: str) -> None:
    """Skip when this build's API refuses one of ``fields`` (what another part of
    issue 32 adds); fail on any other refusal."""
    from lmms_runner.config import ConfigError, from_document

    try:
        from_document(doc)
    except ConfigError as exc:
        for f in fields:
            if f"{f}: unknown field" in str(exc):
                raise Skip(f"{f} is not in this build") from None
        raise Fail(f"the spec is refused: {exc}") from None


def require_served_support() -> None:
    if importlib.util.find_spec("lmms_runner.served") is None:
        raise Skip("the runner's served-model support (lmms_runner/served.py) is not in this build")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def answer_one_poll(port: int, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> float:
    """Listens on the engine's port until the runner asks (``GET /models``), answers 503
    and closes: the runner is then waiting for a server that is not there yet. Returns
    the seconds it took the runner to ask."""
    start = time.monotonic()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
        s.settimeout(0.5)
        while True:
            if proc.poll() is not None or time.monotonic() - start > timeout:
                raise Fail(f"the runner never asked for the model at port {port}:\n{tail(log)}")
            try:
                conn, _ = s.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                request = conn.recv(65536).decode(errors="replace")
                conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            if "/models" not in request.split("\r\n", 1)[0]:
                raise Fail(f"the runner's first request was not GET .../models: {request[:200]!r}")
            return time.monotonic() - start


def check_served_args(result: dict[str, Any], url: str, model_id: str) -> None:
    """The openai backend was given the server's URL and the id it serves, and no
    ``pretrained`` (the contract)."""
    argv = result["provenance"].get("argv", [])
    margs = argv[argv.index("--model_args") + 1] if "--model_args" in argv else ""
    args = dict(kv.partition("=")[::2] for kv in margs.split(",") if kv)
    if args.get("base_url") != url or args.get("model_version") != model_id or "pretrained" in args:
        raise Fail(f"expected base_url={url},model_version={model_id}, no pretrained: {margs}")


class Server:
    """The stand-in engine: an OpenAI-compatible server of the tiny model on 127.0.0.1."""

    def __init__(self, model: Path, device: str, log: Path, timeout: float) -> None:
        self.model, self.device, self.log, self.timeout = model, device, log, timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.kind = ""
        #: The first answer to a chat request (``probe``), once there was one.
        self.answered: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, port: int) -> None:
        if self.proc is not None:
            if port != self.port:
                raise Fail(f"the server already listens on {self.port}, not {port}")
            return
        self.port = port
        serve_ok = importlib.util.find_spec("fastapi") and importlib.util.find_spec("uvicorn")
        self._spawn(bool(serve_ok) and os.environ.get("GPU_SERVER") != "mini")

    def _spawn(self, transformers_serve: bool) -> None:
        if transformers_serve:
            self.kind = "transformers serve"
            argv = ["-c", "from transformers.cli.transformers import main; main()", "serve"]
            argv += [str(self.model), "--device", self.device, "--host", "127.0.0.1"]
        else:
            self.kind = "chat_server.py (transformers generate)"
            argv = [str(Path(__file__).with_name("chat_server.py")), str(self.model)]
            argv += ["--device", self.device]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, *argv, "--port", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def ready(self) -> str:
        """Waits for ``GET /v1/models`` and, the first time, for the answer to one chat
        request with an image; returns the first model id. A ``transformers serve`` that
        exits first or cannot answer (another 5.x release's options or image handling,
        say) is replaced by ``chat_server.py``, and ``kind`` says so: lmms-eval's openai
        backend would score a server's errors as empty answers."""
        assert self.proc is not None
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            problem = ""
            if self.proc.poll() is not None:
                problem = (tail(self.log, 1) or f"exit {self.proc.returncode}")[:200]
            else:
                try:
                    with urllib.request.urlopen(f"{self.url}/models", timeout=5) as r:
                        model_id = str(json.load(r)["data"][0]["id"])
                except OSError:
                    time.sleep(0.5)
                    continue
                if self.answered is not None:
                    return model_id
                try:
                    self.answered = self.probe(model_id)
                    return model_id
                except (OSError, ValueError, KeyError, IndexError) as exc:
                    problem = f"no answer to a chat request with an image: {exc}"[:200]
            if self.kind != "transformers serve":
                raise Fail(f"{self.kind}: {problem}\n{tail(self.log)}")
            stop(self.proc)
            self._spawn(transformers_serve=False)
            self.kind += f", as transformers serve failed ({problem})"
        raise Fail(f"{self.kind} not ready in {self.timeout:.0f} s:\n{tail(self.log)}")

    def probe(self, model_id: str) -> str:
        """One chat request with an image, as lmms-eval's openai backend sends it."""
        from tests.fixtures import colortask

        image = {"url": "data:image/png;base64," + colortask.png((255, 0, 0))}
        content = [{"type": "image_url", "image_url": image}, {"type": "text", "text": "Colour?"}]
        body = {
            "model": model_id,
            "max_tokens": 4,
            "messages": [{"role": "user", "content": content}],
        }
        request = urllib.request.Request(
            f"{self.url}/chat/completions",
            json.dumps(body).encode(),
            {"Content-Type": "application/json", "Authorization": "Bearer local"},
        )
        with urllib.request.urlopen(request, timeout=60) as r:
            answer = json.load(r)["choices"][0]["message"]["content"]
        if not isinstance(answer, str):
            raise ValueError(f"answer {answer!r}")
        return answer

    def close(self) -> None:
        if self.proc is not None:
            stop(self.proc)


class Paths:
    def __init__(self, work: Path, device: str, timeout: float) -> None:
        self.work, self.device, self.timeout = work, device, timeout
        self.model = work / "model"
        self.tasks = work / "tasks"
        self.server = Server(self.model, device, work / "server.log", timeout)

    def prepare(self) -> None:
        from tests.fixtures import colortask
        from tests.gpu import tiny_qwen2vl

        tiny_qwen2vl.build(self.model)
        colortask.write(self.tasks / TASKS_CONFIG_MAP, samples=SAMPLES)

    def base_env(self, run: Path) -> dict[str, str]:
        """This process's environment for a runner here, without an API key of its own
        (a spec without ``apiKey`` gives the runner none)."""
        env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
        env.update(
            {
                "LMMS_TASKS_DIR": str(self.tasks),
                "TMPDIR": str(run / "tmp"),
                "LMMS_TERMINATION_LOG": str(run / "termination"),
            }
        )
        (run / "tmp").mkdir(parents=True, exist_ok=True)
        return env

    def local_env(self, container: dict[str, Any], run: Path) -> dict[str, str]:
        """A rendered container's environment for a process here: plain values as
        rendered; the pod's own folders moved under ``run``; field references (the pod's
        IP, name) left out, so the runner neither listens nor holds its results;
        secret references left out but the runner's token."""
        env = {
            k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH", "LD_LIBRARY_PATH")
        }
        env.update({k: v for k, v in os.environ.items() if k.startswith(("HF_", "CUDA_"))})
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
            elif item["name"] == "LMMS_RUNNER_TOKEN":
                env[item["name"]] = "local"
        for name in ("LMMS_OUTPUT_DIR", "HF_HOME", "HOME", "TMPDIR", "LMMS_STATE_DIR"):
            if name in env:
                env[name] = str(run / name.lower())
                Path(env[name]).mkdir(parents=True, exist_ok=True)
        env.update(
            {
                "LMMS_RUN_CONFIG": str(run / "config.json"),
                "LMMS_TASKS_DIR": str(self.tasks),
                "LMMS_HOLD_TIMEOUT": "0",
                "LMMS_TERMINATION_LOG": str(run / "termination"),
                "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1",
            }
        )
        return env

    def runner(
        self,
        run: Path,
        argv: list[str],
        env: dict[str, str],
        meanwhile: Callable[[subprocess.Popen[bytes], Path], None] | None = None,
    ) -> dict[str, Any]:
        """Runs the runner (``argv`` after ``python -m lmms_runner``) to its end and
        checks what it left: ``ok`` in its termination message, all 32 samples scored,
        its provenance."""
        log = run / "runner.log"
        start = time.monotonic()
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "lmms_runner", *argv],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            if meanwhile is not None:
                meanwhile(proc, log)
            proc.wait(max(1.0, self.timeout - (time.monotonic() - start)))
        except subprocess.TimeoutExpired:
            stop(proc)
            raise Fail(f"the runner timed out after {self.timeout:.0f} s:\n{tail(log)}") from None
        finally:
            stop(proc)
        wall = time.monotonic() - start
        if proc.returncode != 0:
            raise Fail(f"the runner exited {proc.returncode}:\n{tail(log)}")
        term = json.loads((run / "termination").read_text())
        if term.get("ok") is not True:
            raise Fail(f"termination message: {term}")
        results = sorted(run.glob("**/*_results.json"))
        if not results:
            raise Fail("no lmms-eval results file")
        doc = json.loads(results[-1].read_text())
        n = doc.get("n-samples", {}).get(TASK, {}).get("effective")
        if n != SAMPLES or "exact_match,none" not in doc["results"].get(TASK, {}):
            raise Fail(f"expected {SAMPLES} scored samples: {doc.get('n-samples')}")
        evaluation = float(doc["total_evaluation_time_seconds"])
        prov = sorted(run.glob("**/lmms-runner.json"))
        return {
            "samples": n,
            "samples_per_s": round(n / evaluation, 2),
            "samples_per_s_wall": round(n / wall, 2),
            "evaluation_s": round(evaluation, 2),
            "wall_s": round(wall, 2),
            "exact_match": doc["results"][TASK]["exact_match,none"],
            "provenance": json.loads(prov[-1].read_text()) if prov else {},
        }

    def by_hand(self, name: str, doc: dict[str, Any], env: dict[str, str] | None = None) -> Any:
        """``lmms-runner --config``, as a user runs it on a workstation."""
        run = self.work / name
        run.mkdir()
        (run / "evalrun.json").write_text(json.dumps(doc))
        argv = ["--config", str(run / "evalrun.json"), "--output", str(run / "out")]
        argv += ["--listen", "", "--hold-timeout", "0"]
        return self.runner(run, argv, {**self.base_env(run), **(env or {})})

    # -- the paths ---------------------------------------------------------------------

    def hf_args(self) -> dict[str, str]:
        return {"device": self.device, "max_pixels": "12544", "min_pixels": "3136"}

    def hf(self) -> tuple[dict[str, Any], str]:
        args = {**self.hf_args(), "device_map": self.device}
        doc = manifest("tiny-hf", {"type": "qwen2_vl", "pretrained": str(self.model), "args": args})
        result = self.by_hand("hf", doc)
        argv = result["provenance"].get("argv", [])
        if f"device={self.device}" not in ",".join(argv):
            raise Fail(f"the model is not on {self.device}: {argv}")
        return result, f"qwen2_vl on {self.device}, one process"

    def mp(self) -> tuple[dict[str, Any], str]:
        model = {
            "type": "qwen2_vl",
            "pretrained": str(self.model),
            "multiGPU": "ModelParallel",
            "args": self.hf_args(),
        }
        doc = manifest("tiny-mp", model, resources={"gpus": 2})
        require(doc, "spec.model.multiGPU")

        def check(argv: list[str]) -> None:
            margs = argv[argv.index("--model_args") + 1] if "--model_args" in argv else ""
            if "device_map=auto" not in margs.split(",") or any("accelerate" in a for a in argv):
                raise Fail(f"expected one process with device_map=auto: {argv}")

        if self.device != "cuda":
            from lmms_runner import command
            from lmms_runner.config import from_document

            cfg = from_document(doc)
            dist = command.Distributed.from_env(cfg, {})  # 2 GPUs declared, as in a pod
            check(command.build(cfg, str(self.work / "mp"), dist=dist))
            raise Skip(
                "needs CUDA (lmms-eval 0.7.3's qwen2_vl moves its inputs to cuda under "
                "device_map=auto); the runner's command was checked: one process, device_map=auto"
            )
        result = self.by_hand("mp", doc)
        check(result["provenance"].get("argv", []))
        return result, (
            "one process, device_map=auto, for 2 GPUs declared; on one GPU this proves the "
            "command, not the split"
        )

    def engine(self) -> tuple[dict[str, Any], str]:
        from lmms_operator.api import parse_spec
        from lmms_operator.reconcile import job

        model = {"type": "openai", "engine": "vllm", "pretrained": str(self.model)}
        doc = manifest("tiny-engine", model, resources={"gpus": 1})
        require(doc, "spec.model.engine")
        meta = doc["metadata"]
        desired = job.build(
            job.RunRef(meta["name"], meta["namespace"], meta["uid"]),
            parse_spec(doc["spec"]),
            # The engine container's image is the admin's; here a stand-in serves instead.
            job.RunnerDefaults(engine_images=(("vllm", "lmms-engine-vllm:stand-in"),)),
            token="local",
        )
        pod = desired.job["spec"]["template"]["spec"]
        containers = pod["containers"] + pod.get("initContainers", [])
        runner = next(c for c in containers if c["name"] == "runner")
        engines = [c for c in containers if c is not runner]
        if not engines:
            raise Skip("engine path not in this build: the Job has no engine container")
        require_served_support()
        engine = engines[0]
        run = self.work / "engine"
        run.mkdir()
        env = self.local_env(runner, run)
        (run / "config.json").write_text(desired.config_map["data"]["config.json"])
        url = env.get("LMMS_MODEL_URL")
        if not url:
            raise Fail(f"the runner container has no LMMS_MODEL_URL: {runner.get('env')}")
        where = urlsplit(url)
        if where.hostname not in ("127.0.0.1", "localhost") or where.port is None:
            raise Fail(f"LMMS_MODEL_URL {url} is not a port on the pod's localhost")
        command = [*runner.get("command", []), *runner.get("args", [])]
        if command[:1] != ["lmms-runner"]:
            raise Fail(f"unexpected runner command {command}")
        waited: list[float] = []
        served: list[str] = []

        def start_engine_when_polled(proc: subprocess.Popen[bytes], log: Path) -> None:
            # The engine starts only once the runner has asked for it: the wait is real.
            waited.append(answer_one_poll(int(where.port or 0), proc, self.timeout / 2, log))
            self.server.start(int(where.port or 0))
            served.append(self.server.ready())

        result = self.runner(run, command[1:], env, start_engine_when_polled)
        check_served_args(result, url, served[0])
        said = WAIT_MESSAGE in (run / "runner.log").read_text(errors="replace")
        engine_cmd = " ".join([*engine.get("command", []), *engine.get("args", [])])
        gpus = engine.get("resources", {}).get("limits", {})
        return result, (
            f"engine container {engine['name']!r} ({engine.get('image')}: {engine_cmd}; "
            f"limits {gpus}) stood in by {self.server.kind} on {url}; the runner waited "
            f"{waited[0]:.1f} s before its first request, then for the server's start"
            f"{'' if said else f' (its log never said {WAIT_MESSAGE!r})'}"
        )

    def served(self) -> tuple[dict[str, Any], str]:
        port = self.server.port or free_port()
        url = f"http://127.0.0.1:{port}/v1"
        doc = manifest("tiny-served", {"type": "openai", "endpoint": {"url": url}})
        require(doc, "spec.model.endpoint")
        require_served_support()
        self.server.start(port)
        model_id = self.server.ready()
        # What the operator sets for an endpoint URL (the contract): LMMS_MODEL_URL.
        env = {"LMMS_MODEL_URL": url, "LMMS_MODEL_WAIT_SECONDS": str(int(self.timeout))}
        result = self.by_hand("served", doc, env)
        check_served_args(result, url, model_id)
        return result, f"endpoint.url {url} ({self.server.kind}), served model {model_id}"

    def openai_args(self) -> tuple[dict[str, Any], str]:
        port = self.server.port or free_port()
        self.server.start(port)
        model_id = self.server.ready()
        args = {"base_url": self.server.url, "model_version": model_id}
        doc = manifest("tiny-openai", {"type": "openai", "args": args})
        result = self.by_hand("openai-args", doc, {"OPENAI_API_KEY": "local"})
        return result, f"openai backend, base_url {self.server.url} ({self.server.kind})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds per path")
    parser.add_argument(
        "--budget",
        type=float,
        default=420.0,
        help="seconds for all paths (a path left with less than 30 fails at once)",
    )
    a = parser.parse_args(argv)
    chosen = [p for p in a.paths.split(",") if p]
    unknown = set(chosen) - set(PATHS)
    if unknown:
        parser.error(f"unknown paths {sorted(unknown)}; choose from {', '.join(PATHS)}")
    deadline = time.monotonic() + a.budget
    paths = Paths(a.work, a.device, a.timeout)
    paths.prepare()
    report: dict[str, Any] = {"device": a.device, "paths": {}}
    out = os.environ.get("OUT")

    def record(name: str, status: str, line: str, **fields: Any) -> None:
        report["paths"][name] = {"status": status, **fields}
        if paths.server.kind:
            report["server"] = {"kind": paths.server.kind, "first_answer": paths.server.answered}
        print(f"{status} {name}: {line}", flush=True)
        if out:  # after each path: what was measured survives a kill
            Path(out, "gpu-paths.json").write_text(json.dumps(report, indent=1, default=str))

    try:
        for name in chosen:
            left = deadline - time.monotonic()
            if left < 30:
                record(name, "FAIL", f"out of time ({a.budget:.0f} s for all paths)")
                continue
            paths.timeout = paths.server.timeout = min(a.timeout, left)
            try:
                result, what = getattr(paths, name.replace("-", "_"))()
            except Skip as exc:
                record(name, "SKIP", str(exc), why=str(exc))
            except Fail as exc:
                record(name, "FAIL", str(exc), why=str(exc))
            else:
                line = (
                    f"{result['samples_per_s']} samples/s over lmms-eval's evaluation "
                    f"({result['evaluation_s']} s), {result['samples_per_s_wall']} samples/s "
                    f"over the runner's wall time ({result['wall_s']} s); {what}"
                )
                record(name, "PASS", line, what=what, **result)
    finally:
        paths.server.close()
    return 1 if any(r["status"] == "FAIL" for r in report["paths"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
