"""One EvalRun's evaluation: which lmms-eval processes to run (one for the run, one per
task with a state volume, or a node's part of a multi-node run), what an earlier attempt
left to reuse, and which results count (a results file that holds every requested task,
whatever lmms-eval's exit code says)."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
from dataclasses import replace
from pathlib import Path

from lmms_operator import catalogue

from . import command, provenance, results, resume, served
from .config import ConfigError, RunConfig
from .finish import Finish
from .log import log
from .progress import Tracker
from .redact import Redactor
from .server import RunnerServer
from .supervise import Stopped, Supervisor

#: The exit code of a runner stopped by SIGTERM, as a shell reports it.
STOPPED = 128 + signal.SIGTERM


def parse_listen(value: str) -> tuple[str, int] | None:
    if not value:
        return None
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--listen: expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


class Runner:
    def __init__(self, cfg: RunConfig, args: argparse.Namespace, env: dict[str, str]) -> None:
        self.cfg, self.args, self.env = cfg, args, env
        self.output = Path(args.output).resolve()
        self.redact = Redactor.from_environment(env, cfg.model_args)
        self.harness = provenance.harness()
        self.tracker = Tracker(cfg.tasks, harness=self.harness)
        self.dist = command.Distributed.from_env(cfg, env)
        self.state = Path(args.state_dir) / cfg.state_key if args.state_dir else None
        self.server: RunnerServer | None = None
        self.supervisor = Supervisor(self.tracker, self.redact)
        self.finish = Finish(args.termination_log, self.tracker, self.redact, args.hold_timeout)
        if self.state is not None:  # the full samples files stay on the cache volume
            self.finish.samples_dir = self.state / "samples"
            self.finish.volume_root = env.get("HF_HOME")
        self.include_paths = self._include_paths()
        self._results_file: Path | None = None
        #: The model server (LMMS_MODEL_URL) and, once it answered, the model it serves.
        self.model_server = served.ModelServer.from_env(env)
        self.served_model: str | None = None
        if self.model_server is not None:
            # The server holds the model (and the pod's GPUs, for an engine): one client
            # process asks it, however many GPUs the run has.
            self.dist = command.Distributed()

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
        listen = parse_listen(self.args.listen)
        if listen is not None:
            self.server = RunnerServer(
                listen[0], listen[1], self.tracker, self.env.get("LMMS_RUNNER_TOKEN") or None
            )
            self.server.start()
            self.finish.server = self.server
            log(f"serving /progress, /metrics, /results on {listen[0]}:{self.server.address[1]}")
        if self.harness.patched:
            log(f"lmms-eval {self.harness.lmms_eval_version}, with the runner's patches")
        else:
            log(self.harness.message or "lmms-eval runs without the runner's patches")
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
        except Stopped:
            return STOPPED
        if self.supervisor.stopping.is_set():
            return STOPPED
        if rc != 0:
            return self.finish.failed(f"lmms-eval exited with code {rc} on node {node}")
        return self.finish.node_done(node)

    def _wait_for_model(self) -> int | None:
        """An engine or endpoint run: waits until the model server lists its model, then
        evaluates that model through lmms-eval's openai backend. An exit code when the
        wait ends without one."""
        server = self.model_server
        assert server is not None
        self.tracker.set_phase(
            "loading", "ModelLoading", f"waiting for the model server at {server.url}"
        )

        def waiting(message: str) -> None:
            self.tracker.set_phase("loading", "ModelLoading", self.redact(message))

        try:
            model_id = server.wait(waiting, self.supervisor.stopping)
        except served.ServedError as exc:
            if self.supervisor.stopping.is_set():
                return STOPPED
            return self.finish.failed(str(exc), reason=exc.reason)
        log(f"the model server at {server.url} serves {model_id}")
        self.served_model = model_id
        args = served.model_args(server, model_id, self.cfg.model_args)
        self.cfg = replace(self.cfg, served=True, model_args=args)
        self.tracker.set_phase("starting")
        return None

    def _run(self) -> int:
        if self.model_server is not None and self.served_model is None:
            failure = self._wait_for_model()
            if failure is not None:
                return failure
        argv = self.argv()
        if self.dist.nodes > 1 and self.dist.node_rank != 0:
            return self._run_other_node(argv)
        data = self._previous_results()
        if data is None:
            try:
                data = self._evaluate_all(argv)
            except Stopped:
                return STOPPED
            except results.ResultsError as exc:
                return self.finish.failed(str(exc))
        prov = provenance.provenance(self.cfg, self.env, argv, self.redact)
        if self.model_server is not None:
            prov.served_model, prov.endpoint = self.served_model, self.model_server.url
        summary = results.parse(data, prov)
        summary.results_file = str(self._results_file) if self._results_file else None
        self._save_state(data)
        return self.finish.publish(summary, self.cfg, self.env, self.output)

    def _evaluate_all(self, argv: list[str]) -> dict[str, object]:
        """Every task's results: task by task where a state volume keeps each task's
        (every node must be in step for that, so a multi-node run evaluates its tasks in
        one lmms-eval process), else from one lmms-eval process."""
        if self.state is not None and len(self.cfg.tasks) > 1 and self.dist.nodes == 1:
            return self._evaluate_task_by_task()
        rc = self._evaluate(argv)
        if self.supervisor.stopping.is_set():
            raise Stopped()
        return self._check_results(rc, self.output, self.cfg.tasks)

    def _previous_results(self) -> dict[str, object] | None:
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
        log(f"an earlier attempt finished this evaluation: reusing {saved}")
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
        if self.model_server is not None and not env.get("OPENAI_API_KEY"):
            # lmms-eval's openai client refuses to start without a key; a server that
            # needs none ignores this placeholder (vLLM's and SGLang's convention).
            env["OPENAI_API_KEY"] = "EMPTY"
        if self.state is not None:
            self.state.mkdir(parents=True, exist_ok=True)
            interval = resume.checkpoint_interval(command.in_flight(self.cfg))
            env.setdefault("LMMS_CACHE_CHECKPOINT_INTERVAL", interval)
            reused = resume.merge_unfinished_attempts(self.state / "response-cache")
            if reused:
                log(f"resuming: {reused} answer(s) of an earlier attempt are reused")
        log("running: " + self.redact(" ".join(argv)))
        if self.tracker.phase == "done":
            self.tracker.set_phase("starting")
        return self.supervisor.run(argv, env)  # with the checkpoint interval set above

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
                log(f"task {task} finished in an earlier attempt: not evaluated again")
                parts.append(results.load(saved))
                self.tracker.finish_invocation()
                continue
            out = self.output / "tasks" / task
            self.tracker.begin_task(task)
            rc = self._evaluate(self.argv([task], out))
            if self.supervisor.stopping.is_set():
                raise Stopped()
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

    def terminate(self) -> None:
        self.supervisor.terminate()
        if self.server is not None:
            self.server.acknowledged.set()
