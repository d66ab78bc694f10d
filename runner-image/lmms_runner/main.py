"""`lmms-runner`: runs lmms-eval for one EvalRun, reports progress, never loses results.

In the pod every option comes from the environment the operator sets; on a workstation:

    lmms-runner --config evalrun.yaml [--include-path DIR] [--output DIR] [--listen 127.0.0.1:8080]

Exit codes: 0 done, 2 configuration error, 3 evaluation failed (no complete results,
whatever lmms-eval's own exit code), 4 upload failed (results were still served).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from lmms_operator import catalogue
from lmms_operator.api.runner import (
    EXIT_CONFIG_ERROR,
    EXIT_EVALUATION_FAILED,
    EXIT_OK,
    EXIT_UPLOAD_FAILED,
    RESULTS_SUMMARY_FILE,
    Provenance,
)

from . import command, results, resume, upload
from .config import ConfigError, RunConfig, load
from .progress import Tracker
from .redact import Redactor
from .server import RunnerServer

TERMINATION_LOG = "/dev/termination-log"


def _log(msg: str) -> None:
    print(f"lmms-runner: {msg}", file=sys.stderr, flush=True)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _write_termination(path: str, text: str) -> None:
    try:
        with open(path, "w") as fh:
            fh.write(text)
    except OSError:
        pass  # not in a pod


_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^ \\]+)", re.MULTILINE)


def locked_packages(lock_file: str | None) -> dict[str, Any]:
    """The provenance of the environment: the lock file the image was installed from
    (its sha256) and every package it pins (LMMS_LOCK_FILE, set by the runner image)."""
    if not lock_file:
        return {}
    try:
        text = Path(lock_file).read_bytes()
    except OSError:
        return {}
    pins = {m.group(1).lower(): m.group(2) for m in _PIN.finditer(text.decode(errors="replace"))}
    return {"lock_sha256": hashlib.sha256(text).hexdigest(), "locked": pins}


def resolved_commit(
    hf_home: str | None, pretrained: str | None, revision: str | None
) -> str | None:
    """The commit the Hub resolved ``revision`` of ``pretrained`` to, as the Hugging Face
    cache recorded it (``hub/models--<org>--<name>/refs/<revision>``); a revision that is
    a commit already is that commit. None for a local path or a model not in the cache."""
    if revision and _COMMIT.match(revision):
        return revision
    if not hf_home or not pretrained or pretrained.startswith(("/", ".")):
        return None
    repo = Path(hf_home) / "hub" / ("models--" + pretrained.replace("/", "--"))
    try:
        commit = (repo / "refs" / (revision or "main")).read_text().strip()
    except OSError:
        return None
    return commit if _COMMIT.match(commit) else None


def _parse_listen(value: str) -> tuple[str, int] | None:
    if not value:
        return None
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--listen: expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


class Forwarder(threading.Thread):
    """Copies one output stream of lmms-eval to ours, redacted, and feeds the tracker.

    tqdm redraws a bar with carriage returns many times a second; the log keeps at most
    one line per bar per second so ``kubectl logs`` stays readable."""

    def __init__(self, stream: IO[bytes], out: IO[str], tracker: Tracker, redact: Redactor) -> None:
        super().__init__(daemon=True)
        self.stream, self.out, self.tracker, self.redact = stream, out, tracker, redact
        self._last_bar = 0.0

    def run(self) -> None:
        buf = b""
        while True:
            chunk = (
                self.stream.read1(65536)
                if hasattr(self.stream, "read1")
                else self.stream.read(65536)
            )
            if not chunk:
                break
            buf += chunk
            while True:
                cut = min((i for i in (buf.find(b"\n"), buf.find(b"\r")) if i >= 0), default=-1)
                if cut < 0:
                    break
                line, sep, buf = buf[:cut], buf[cut : cut + 1], buf[cut + 1 :]
                self._line(line.decode(errors="replace"), is_redraw=sep == b"\r")
        if buf:
            self._line(buf.decode(errors="replace"), is_redraw=False)

    def _line(self, text: str, is_redraw: bool) -> None:
        if not text.strip():
            return
        self.tracker.feed(text)
        now = time.monotonic()
        if is_redraw and now - self._last_bar < 1.0 and "100%" not in text:
            return
        if is_redraw:
            self._last_bar = now
        self.out.write(self.redact(text) + "\n")
        self.out.flush()


class _Stopped(Exception):
    pass


class Runner:
    def __init__(self, cfg: RunConfig, args: argparse.Namespace, env: dict[str, str]) -> None:
        self.cfg, self.args, self.env = cfg, args, env
        self.output = Path(args.output).resolve()
        self.redact = Redactor.from_environment(env, cfg.model_args)
        self.tracker = Tracker(cfg.tasks)
        self.dist = command.Distributed.from_env(cfg, env)
        self.state = Path(args.state_dir) / cfg.state_key if args.state_dir else None
        self.child: subprocess.Popen[bytes] | None = None
        self.server: RunnerServer | None = None
        self.stopping = threading.Event()
        self.include_paths = self._include_paths()

    def argv(self, tasks: list[str] | None = None, output: Path | None = None) -> list[str]:
        cache = str(self.state / "response-cache") if self.state else None
        return command.build(
            self.cfg,
            str(output or self.output),
            self.include_paths,
            cache,
            self.dist,
            tasks=tasks,
        )

    def _include_paths(self) -> list[str]:
        """lmms-eval takes one --include_path: several task directories (one per
        custom-task ConfigMap, under $LMMS_TASKS_DIR) are copied into one."""
        dirs = [Path(p) for p in (self.args.include_path or [])]
        tasks_dir = Path(self.env.get("LMMS_TASKS_DIR", "/etc/lmms/tasks"))
        for source in self.cfg.spec.custom_tasks:
            path = tasks_dir / source.config_map
            if path.is_dir():
                dirs.append(path)
            elif not dirs:
                # In the cluster the ConfigMap is mounted there; locally, --include-path
                # gives the task files instead (the local-reproduction story).
                raise ConfigError(
                    f"spec.customTasks: {path} is not mounted (locally, pass the task files' "
                    "directory with --include-path)"
                )
        if len(dirs) <= 1:
            return [str(d) for d in dirs]
        merged = Path(self.env.get("TMPDIR", "/tmp")) / "lmms-runner-tasks"
        shutil.rmtree(merged, ignore_errors=True)
        for i, d in enumerate(dirs):
            shutil.copytree(d, merged / f"{i}-{d.name}")
        return [str(merged)]

    def run(self) -> int:
        listen = _parse_listen(self.args.listen)
        if listen is not None:
            self.server = RunnerServer(
                listen[0], listen[1], self.tracker, self.env.get("LMMS_RUNNER_TOKEN") or None
            )
            self.server.start()
            _log(f"serving /progress, /metrics, /results on {listen[0]}:{self.server.address[1]}")
        try:
            return self._run()
        finally:
            if self.server is not None:
                self.server.stop()

    def _run_other_node(self, argv: list[str]) -> int:
        """A multi-node run's node other than 0: lmms-eval writes results only on global
        rank 0 (node 0), so this node's part is done when lmms-eval exits 0."""
        node = self.dist.node_rank
        try:
            rc = self._evaluate(argv)
        except _Stopped:
            return 128 + signal.SIGTERM
        if self.stopping.is_set():
            return 128 + signal.SIGTERM
        if rc != 0:
            message = self.redact(
                f"lmms-eval exited with code {rc} on node {node}"
                + (f"; last error: {self.tracker.last_error}" if self.tracker.last_error else "")
            )
            self.tracker.set_phase("failed", "EvaluationFailed", message)
            _write_termination(
                self.args.termination_log, results.failure_message("EvaluationFailed", message)
            )
            _log(f"evaluation failed: {message}")
            return EXIT_EVALUATION_FAILED
        _log(f"node {node} finished its part; node 0 holds the results")
        _write_termination(
            self.args.termination_log,
            json.dumps({"v": 1, "ok": True, "truncated": False, "tasks": {}, "node": node}),
        )
        self.tracker.set_phase("done")
        return EXIT_OK

    def _run(self) -> int:
        argv = self.argv()
        if self.dist.nodes > 1 and self.dist.node_rank != 0:
            return self._run_other_node(argv)
        data = self._previous_results()
        if data is None:
            try:
                # Task by task needs every node in step; a multi-node run evaluates its
                # tasks in one lmms-eval process.
                if self.state is not None and len(self.cfg.tasks) > 1 and self.dist.nodes == 1:
                    data = self._evaluate_task_by_task()
                else:
                    rc = self._evaluate(argv)
                    if self.stopping.is_set():
                        return 128 + signal.SIGTERM
                    data = self._check_results(rc, self.output, self.cfg.tasks)
            except _Stopped:
                return 128 + signal.SIGTERM
            except results.ResultsError as exc:
                message = str(exc)
                if self.tracker.last_error:
                    message += f"; last error: {self.tracker.last_error}"
                message = self.redact(message)
                self.tracker.set_phase("failed", "EvaluationFailed", message)
                _write_termination(
                    self.args.termination_log, results.failure_message("EvaluationFailed", message)
                )
                _log(f"evaluation failed: {message}")
                return EXIT_EVALUATION_FAILED
        summary = results.parse(data, self._provenance(argv))
        summary.results_file = str(self._results_file) if self._results_file else None
        self._save_state(data)
        (self.output / "lmms-runner.json").write_text(
            json.dumps(
                {
                    "argv": summary.provenance.argv,
                    "configHash": self.cfg.config_hash,
                    "shard": self.cfg.shard,
                    "versions": {
                        "lmms-eval": summary.provenance.lmms_eval_version,
                        "torch": summary.provenance.torch_version,
                        "lmms-operator": _version("lmms-operator"),
                    },
                },
                indent=1,
            )
        )
        code = EXIT_OK
        s3 = self.cfg.spec.output.s3 if self.cfg.spec.output else None
        if s3 is not None:
            # Uploaded with the output: the operator reads it when it cannot reach us.
            (self.output / RESULTS_SUMMARY_FILE).write_text(
                summary.model_dump_json(by_alias=True, indent=1)
            )
            self.tracker.set_phase("uploading")
            prefix = upload.key_prefix(
                s3, self.env.get("POD_NAMESPACE", ""), self.cfg.name, self.cfg.state_key
            )
            try:
                summary.s3_location = upload.upload_dir(self.output, s3, prefix)
                _log(f"uploaded the output to {summary.s3_location}")
            except upload.UploadError as exc:
                _log(self.redact(str(exc)))
                code = EXIT_UPLOAD_FAILED
        text = results.termination_message(summary)
        summary.truncated = json.loads(text).get("truncated", False)
        _write_termination(self.args.termination_log, text)
        if self.server is not None:
            self.server.results = summary
        self.tracker.set_phase(
            "done" if code == EXIT_OK else "failed", None if code == EXIT_OK else "UploadFailed"
        )
        for t in summary.tasks:
            primary = next((m for m in t.metrics if m.name == t.primary), None)
            if primary is not None:
                _log(f"{t.task}: {primary.name} = {primary.value}")
        if self._hold() and code == EXIT_UPLOAD_FAILED:
            # The operator kept the results (and reported the failed upload): exiting 4
            # would make the Job run the whole evaluation again for nothing.
            _log("the upload failed, but the operator kept the results: exiting 0")
            return EXIT_OK
        return code

    def _previous_results(self) -> dict[str, object] | None:
        self._results_file: Path | None = None
        if self.state is None:
            return None
        saved = self.state / "results.json"
        if not saved.exists():
            return None
        try:
            data = results.load(saved)
        except results.ResultsError:
            return None
        if results.missing_tasks(data, self.cfg.tasks, catalogue.load().tags):
            return None
        _log(f"an earlier attempt finished this evaluation: reusing {saved}")
        self.output.mkdir(parents=True, exist_ok=True)
        self._results_file = self.output / "results.json"
        shutil.copyfile(saved, self._results_file)
        return data

    def _save_state(self, data: dict[str, object]) -> None:
        if self.state is None:
            return
        self.state.mkdir(parents=True, exist_ok=True)
        tmp = self.state / "results.json.tmp"
        tmp.write_text(json.dumps(data))
        tmp.replace(self.state / "results.json")

    def _evaluate(self, argv: list[str]) -> int:
        self.output.mkdir(parents=True, exist_ok=True)
        self.tracker.failed_requests = 0
        env = command.child_env(self.env, self.dist)
        if self.state is not None:
            self.state.mkdir(parents=True, exist_ok=True)
            env.setdefault("LMMS_CACHE_CHECKPOINT_INTERVAL", resume.CHECKPOINT_INTERVAL)
            reused = resume.merge_unfinished_attempts(self.state / "response-cache")
            if reused:
                _log(f"resuming: {reused} answer(s) of an earlier attempt are reused")
        _log("running: " + self.redact(" ".join(argv)))
        if self.tracker.phase == "done":
            self.tracker.set_phase("starting")
        self.child = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,  # with the checkpoint interval set above
        )
        assert self.child.stdout is not None and self.child.stderr is not None
        readers = [
            Forwarder(self.child.stdout, sys.stdout, self.tracker, self.redact),
            Forwarder(self.child.stderr, sys.stderr, self.tracker, self.redact),
        ]
        for r in readers:
            r.start()
        rc = self.child.wait()
        for r in readers:
            r.join(timeout=10)
        _log(f"lmms-eval exited with code {rc}")
        return rc

    def _check_results(self, rc: int, output: Path, tasks: list[str]) -> dict[str, object]:
        path = results.find_results_file(output)
        if path is None:
            raise results.ResultsError(f"lmms-eval exited with code {rc} and wrote no results file")
        data = results.load(path)
        missing = results.missing_tasks(data, tasks, catalogue.load().tags)
        if missing:
            raise results.ResultsError(
                f"lmms-eval exited with code {rc}; the results lack task(s) {', '.join(missing)}"
            )
        if self.tracker.failed_requests:
            raise results.ResultsError(
                f"{self.tracker.failed_requests} model request(s) failed after all retries "
                "(lmms-eval scored placeholders for them)"
            )
        self._results_file = path
        return data

    def _evaluate_task_by_task(self) -> dict[str, object]:
        """With a cache volume: one lmms-eval process per task, each task's results kept
        on the volume, so a restarted pod redoes only the tasks that had not finished.
        Each extra task pays lmms-eval's start-up once more (see docs/benchmarks.md)."""
        assert self.state is not None
        done_dir = self.state / "tasks"
        done_dir.mkdir(parents=True, exist_ok=True)
        parts: list[dict[str, object]] = []
        self.tracker.plan(len(self.cfg.tasks))
        for task in self.cfg.tasks:
            saved = done_dir / f"{task}.json"
            if saved.exists():
                _log(f"task {task} finished in an earlier attempt: not evaluated again")
                parts.append(results.load(saved))
                self.tracker.finish_invocation()
                continue
            out = self.output / "tasks" / task
            self.tracker.begin_task(task)
            rc = self._evaluate(self.argv([task], out))
            if self.stopping.is_set():
                raise _Stopped()
            data = self._check_results(rc, out, [task])
            self.tracker.finish_invocation()
            tmp = saved.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(saved)
            parts.append(data)
        combined = results.combine(parts)
        self._results_file = self.output / "combined_results.json"
        self._results_file.write_text(json.dumps(combined, indent=1))
        return combined

    def _provenance(self, argv: list[str]) -> Provenance:
        return Provenance(
            lmms_eval_version=_version("lmms-eval"),
            torch_version=_version("torch"),
            model=self.cfg.spec.model.type,
            pretrained=self.cfg.pretrained,
            revision=self.cfg.spec.model.revision,
            commit=resolved_commit(
                self.env.get("HF_HOME"), self.cfg.pretrained, self.cfg.spec.model.revision
            ),
            seed=self.cfg.spec.evaluation.seed,
            **locked_packages(self.env.get("LMMS_LOCK_FILE")),
            config_hash=self.cfg.config_hash,
            argv=[self.redact(a) for a in argv],
        )

    def _hold(self) -> bool:
        """Keeps serving /results until the operator acknowledges or the hold times out;
        True when the operator acknowledged (it kept the results)."""
        if self.server is None or self.args.hold_timeout <= 0:
            return False
        _log(f"holding the results until acknowledged (at most {self.args.hold_timeout:.0f}s)")
        since = time.monotonic()
        if self.server.acknowledged.wait(self.args.hold_timeout):
            # How long the pod (and its GPUs) waited for the operator: tests/bench/collection.py.
            _log(f"results acknowledged after {time.monotonic() - since:.2f}s")
            return True
        _log("hold timeout passed; the termination message and the output keep the results")
        return False

    def terminate(self) -> None:
        self.stopping.set()
        if self.child is not None and self.child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.child.pid, signal.SIGTERM)
        if self.server is not None:
            self.server.acknowledged.set()


def parse_args(argv: list[str] | None, env: dict[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lmms-runner", description=__doc__.split("\n")[0])
    pod_ip = env.get("POD_IP")
    port = env.get("LMMS_RUNNER_PORT", "8080")
    parser.add_argument(
        "--config",
        default=env.get("LMMS_RUN_CONFIG"),
        help="EvalRun manifest or spec (YAML or JSON); default $LMMS_RUN_CONFIG",
    )
    parser.add_argument(
        "--include-path",
        action="append",
        default=None,
        help="directory of custom task YAML (repeatable)",
    )
    parser.add_argument(
        "--output",
        default=env.get("LMMS_OUTPUT_DIR", "lmms-output"),
        help="output directory for lmms-eval",
    )
    parser.add_argument(
        "--listen",
        default=f"{pod_ip}:{port}" if pod_ip else "",
        help="HOST:PORT for /progress, /metrics, /results ('' to disable)",
    )
    parser.add_argument(
        "--state-dir",
        default=env.get("LMMS_STATE_DIR") or None,
        help="directory on a persistent volume for resuming after a restart",
    )
    parser.add_argument(
        "--hold-timeout",
        type=float,
        default=float(env.get("LMMS_HOLD_TIMEOUT", "600" if pod_ip else "0")),
        help="seconds to keep serving /results until acknowledged",
    )
    parser.add_argument(
        "--termination-log", default=env.get("LMMS_TERMINATION_LOG", TERMINATION_LOG)
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    env = dict(os.environ)
    args = parse_args(argv, env)  # usage errors exit 2 too (argparse)
    try:
        if not args.config:
            raise ConfigError("no configuration: pass --config or set LMMS_RUN_CONFIG")
        cfg = load(Path(args.config)).for_shard(env.get("LMMS_SHARD_INDEX"))
        runner = Runner(cfg, args, env)
    except ConfigError as exc:
        _log(f"configuration error: {exc}")
        _write_termination(args.termination_log, results.failure_message("ConfigError", str(exc)))
        return EXIT_CONFIG_ERROR

    def on_signal(signum: int, _frame: object) -> None:
        _log(f"signal {signum}: stopping lmms-eval")
        runner.terminate()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return runner.run()
    except ConfigError as exc:
        _log(f"configuration error: {exc}")
        _write_termination(args.termination_log, results.failure_message("ConfigError", str(exc)))
        return EXIT_CONFIG_ERROR
    except OSError as exc:
        if runner.server is None and args.listen:
            _log(f"configuration error: cannot listen on {args.listen}: {exc.strerror}")
            return EXIT_CONFIG_ERROR
        raise


if __name__ == "__main__":
    sys.exit(main())
