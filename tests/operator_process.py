"""Starts and stops the real operator process for cluster and e2e tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from lmms_devcluster import devcluster
from lmms_devcluster.imagestore import HOST_IMAGE

REPO = Path(__file__).resolve().parents[1]
SCRIPTED_RUNNER = REPO / "tests" / "fixtures" / "scripted_runner.py"

#: Short timeouts so that time-based failures show within a test.
TEST_SETTINGS = {
    "LMMS_UNSCHEDULABLE_TIMEOUT": "4",
    "LMMS_IMAGE_PULL_TIMEOUT": "4",
    "LMMS_REFERENCE_TIMEOUT": "20",
    "LMMS_CONFIG_ERROR_TIMEOUT": "8",
    "LMMS_POD_CREATION_TIMEOUT": "15",
    "LMMS_RESYNC_INTERVAL": "1",
    "LMMS_SCRAPE_INTERVAL": "1",
    "LMMS_HOLD_TIMEOUT": "120",
    # The tests' S3 server (moto) listens on loopback, which the operator refuses by default.
    "LMMS_OBJECT_STORE_ALLOWED_CIDRS": "127.0.0.0/8",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    def __init__(
        self,
        cluster: devcluster.DevCluster,
        workdir: Path,
        env: dict[str, str] | None = None,
        kubeconfig: Path | None = None,
        args: list[str] | None = None,
        defaults: bool = False,
    ) -> None:
        """``defaults``: the operator's own settings (benchmarks) instead of
        ``TEST_SETTINGS``; ``env`` applies over either."""
        self.cluster = cluster
        self.kubeconfig = kubeconfig or cluster.kubeconfig
        self.args = args or []
        self.workdir = workdir
        self.extra_env = env or {}
        self.settings = {} if defaults else TEST_SETTINGS
        self.proc: subprocess.Popen[bytes] | None = None
        self.liveness_port = _free_port()
        self.metrics_port = _free_port()
        self.log_path = workdir / "operator.log"

    def start(self) -> None:
        env = dict(os.environ)
        env.update(
            {
                "KUBECONFIG": str(self.kubeconfig),
                "LMMS_RUNNER_COMMAND": f"{sys.executable} {SCRIPTED_RUNNER}",
                # Runner pods run with this environment's Python (tests/fixtures live
                # here); tests/e2e/test_in_cluster.py runs the built runner image.
                "LMMS_RUNNER_IMAGE": HOST_IMAGE,
                **self.settings,
                **self.extra_env,
            }
        )
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lmms_operator",
                "run",
                "--liveness",
                f"http://127.0.0.1:{self.liveness_port}/healthz",
                "--metrics-address",
                f"127.0.0.1:{self.metrics_port}",
                *self.args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited: {self.log_path.read_text()[-3000:]}")
            try:
                url = f"http://127.0.0.1:{self.liveness_port}/healthz"
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("operator did not become live in 60s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
