"""How a run ends: its results published (the output's record of the run, the upload to
S3, the termination message, ``/results`` until the operator acknowledges them), or its
failure reported where the operator looks for it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from lmms_operator.api.runner import (
    EXIT_EVALUATION_FAILED,
    EXIT_OK,
    EXIT_UPLOAD_FAILED,
    RESULTS_SUMMARY_FILE,
    ResultsSummary,
    SamplesReport,
)

from . import results, samples, upload
from .config import RunConfig
from .log import log
from .progress import Tracker
from .provenance import version
from .redact import Redactor
from .server import RunnerServer

TERMINATION_LOG = "/dev/termination-log"


def write_termination(path: str, text: str) -> None:
    try:
        with open(path, "w") as fh:
            fh.write(text)
    except OSError:
        pass  # not in a pod


@dataclass
class Finish:
    """Where a run's outcome goes: the tracker (``/progress``), the termination message,
    the server's ``/results`` (once it serves), the log."""

    termination_log: str
    tracker: Tracker
    redact: Redactor
    hold_timeout: float
    server: RunnerServer | None = None
    #: A directory on the cache volume where the full samples files are kept, and the
    #: volume's mount point (the status names the path within the volume).
    samples_dir: Path | None = None
    volume_root: str | None = None

    def failed(self, message: str, reason: str = "EvaluationFailed") -> int:
        """The evaluation failed: why (with lmms-eval's last error), redacted, everywhere."""
        if self.tracker.last_error:
            message += f"; last error: {self.tracker.last_error}"
        message = self.redact(message)
        self.tracker.set_phase("failed", reason, message)
        write_termination(self.termination_log, results.failure_message(reason, message))
        log(f"evaluation failed: {message}")
        return EXIT_EVALUATION_FAILED

    def node_done(self, node: int) -> int:
        """A multi-node run's node other than 0 did its part (node 0 holds the results)."""
        log(f"node {node} finished its part; node 0 holds the results")
        write_termination(
            self.termination_log,
            json.dumps({"v": 1, "ok": True, "truncated": False, "tasks": {}, "node": node}),
        )
        self.tracker.set_phase("done")
        return EXIT_OK

    def publish(
        self, summary: ResultsSummary, cfg: RunConfig, env: dict[str, str], output: Path
    ) -> int:
        """The results everywhere they go; the runner's exit code."""
        (output / "lmms-runner.json").write_text(
            json.dumps(
                {
                    "argv": summary.provenance.argv,
                    "configHash": cfg.config_hash,
                    "shard": cfg.shard,
                    "versions": {
                        "lmms-eval": summary.provenance.lmms_eval_version,
                        "torch": summary.provenance.torch_version,
                        "lmms-operator": version("lmms-operator"),
                    },
                },
                indent=1,
            )
        )
        code = self._upload(summary, cfg, env, output)
        text = results.termination_message(summary)
        summary.truncated = json.loads(text).get("truncated", False)
        write_termination(self.termination_log, text)
        if self.server is not None:
            if cfg.spec.evaluation.log_samples:
                self.server.samples = self._samples(output)
            self.server.results = summary
        self.tracker.set_phase(
            "done" if code == EXIT_OK else "failed", None if code == EXIT_OK else "UploadFailed"
        )
        for t in summary.tasks:
            primary = next((m for m in t.metrics if m.name == t.primary), None)
            if primary is not None:
                log(f"{t.task}: {primary.name} = {primary.value}")
        if self.hold() and code == EXIT_UPLOAD_FAILED:
            # The operator kept the results (and reported the failed upload): exiting 4
            # would make the Job run the whole evaluation again for nothing.
            log("the upload failed, but the operator kept the results: exiting 0")
            return EXIT_OK
        return code

    def _samples(self, output: Path) -> SamplesReport | None:
        """The logged samples, compact (and the full files on the cache volume); a failure
        to read them costs the samples only, never the scores."""
        try:
            report = samples.report(output, self.samples_dir, self.volume_root, self.redact)
        except (OSError, ValueError) as exc:
            log(self.redact(f"the logged samples were not read: {exc}"))
            return None
        kept = sum(len(t.records) for t in report.tasks)
        log(f"logged samples: {kept} record(s) of {len(report.tasks)} task(s) to serve")
        return report

    def _upload(
        self, summary: ResultsSummary, cfg: RunConfig, env: dict[str, str], output: Path
    ) -> int:
        """The output to S3 where the run asks for it, with the summary in it (the operator
        reads it when it cannot reach the runner)."""
        s3 = cfg.spec.output.s3 if cfg.spec.output else None
        if s3 is None:
            return EXIT_OK
        (output / RESULTS_SUMMARY_FILE).write_text(summary.model_dump_json(by_alias=True, indent=1))
        self.tracker.set_phase("uploading")
        prefix = upload.key_prefix(s3, env.get("POD_NAMESPACE", ""), cfg.name, cfg.state_key)
        try:
            summary.s3_location = upload.upload_dir(output, s3, prefix)
        except upload.UploadError as exc:
            log(self.redact(str(exc)))
            return EXIT_UPLOAD_FAILED
        log(f"uploaded the output to {summary.s3_location}")
        return EXIT_OK

    def hold(self) -> bool:
        """Keeps serving /results until the operator acknowledges or the hold times out;
        True when the operator acknowledged (it kept the results)."""
        if self.server is None or self.hold_timeout <= 0:
            return False
        log(f"holding the results until acknowledged (at most {self.hold_timeout:.0f}s)")
        since = time.monotonic()
        if self.server.acknowledged.wait(self.hold_timeout):
            # How long the pod (and its GPUs) waited for the operator: tests/bench/collection.py.
            log(f"results acknowledged after {time.monotonic() - since:.2f}s")
            return True
        log("hold timeout passed; the termination message and the output keep the results")
        return False
