"""The runner's /results long poll, against the runner's real HTTP server: a runner near
its end answers once its results are ready, not after the whole wait; a run that is
over, or a request without the token, is answered at once."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from lmms_operator.api.runner import Provenance, ResultsSummary
from lmms_runner.progress import Tracker
from lmms_runner.server import MAX_WAIT, RunnerServer, wait_seconds

TOKEN = "t0ken"
SUMMARY = ResultsSummary(provenance=Provenance(model="openai", config_hash="abc"))


@pytest.fixture()
def runner() -> Iterator[tuple[RunnerServer, str]]:
    server = RunnerServer("127.0.0.1", 0, Tracker(["colors"]), TOKEN)
    server.start()
    host, port = server.address
    yield server, f"http://{host}:{port}"
    server.stop()


def get(url: str, token: str | None = TOKEN) -> tuple[int, float]:
    """The HTTP status of a GET, and the seconds it took."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            code = int(resp.status)
    except urllib.error.HTTPError as exc:
        code = exc.code
    return code, time.monotonic() - started


def test_a_finishing_runner_answers_once_its_results_are_ready(
    runner: tuple[RunnerServer, str],
) -> None:
    server, base = runner
    server.tracker.set_phase("postprocessing")
    timer = threading.Timer(0.3, lambda: setattr(server, "results", SUMMARY))
    timer.start()
    code, took = get(f"{base}/results?wait={MAX_WAIT}")
    assert code == 200
    assert 0.25 <= took < MAX_WAIT / 2  # when the results came, not at the end of the wait
    assert get(f"{base}/results?wait={MAX_WAIT}")[0] == 200  # and at once from then on


def test_the_wait_covers_the_last_answers_and_the_post_processing(
    runner: tuple[RunnerServer, str],
) -> None:
    server, base = runner
    server.tracker.set_phase("evaluating")
    threading.Timer(0.2, lambda: server.tracker.set_phase("postprocessing")).start()
    threading.Timer(0.4, lambda: setattr(server, "results", SUMMARY)).start()
    code, took = get(f"{base}/results?wait={MAX_WAIT}")
    assert code == 200
    assert 0.35 <= took < MAX_WAIT / 2


def test_a_run_that_is_over_answers_at_once(runner: tuple[RunnerServer, str]) -> None:
    server, base = runner
    server.tracker.set_phase("failed", "EvaluationFailed", "no results")
    code, took = get(f"{base}/results?wait={MAX_WAIT}")
    assert (code, took < MAX_WAIT / 2) == (404, True)


def test_a_wait_ends_when_the_run_fails(runner: tuple[RunnerServer, str]) -> None:
    server, base = runner
    server.tracker.set_phase("postprocessing")
    threading.Timer(0.3, lambda: server.tracker.set_phase("failed", "EvaluationFailed")).start()
    code, took = get(f"{base}/results?wait={MAX_WAIT}")
    assert (code, took < MAX_WAIT / 2) == (404, True)


def test_a_wait_goes_on_through_the_next_task(runner: tuple[RunnerServer, str]) -> None:
    """Task by task: post-processing one task, then evaluating the next: no results yet,
    so the request is answered when its wait is over."""
    server, base = runner
    server.tracker.set_phase("postprocessing")
    threading.Timer(0.2, lambda: server.tracker.set_phase("evaluating")).start()
    code, took = get(f"{base}/results?wait=1")
    assert code == 404
    assert 0.95 <= took < MAX_WAIT / 2


def test_a_wait_without_the_token_is_refused_at_once(runner: tuple[RunnerServer, str]) -> None:
    server, base = runner
    server.tracker.set_phase("postprocessing")
    for token in (None, "wrong"):
        code, took = get(f"{base}/results?wait={MAX_WAIT}", token=token)
        assert (code, took < MAX_WAIT / 2) == (401, True)


def test_a_wait_is_not_longer_than_asked(runner: tuple[RunnerServer, str]) -> None:
    server, base = runner
    server.tracker.set_phase("uploading")
    code, took = get(f"{base}/results?wait=0.5")
    assert code == 404
    assert 0.45 <= took < MAX_WAIT / 2


def test_the_wait_parameter() -> None:
    assert wait_seconds("/results") == 0.0
    assert wait_seconds("/results?wait=1.5") == 1.5
    assert wait_seconds("/results?wait=-3") == 0.0
    assert wait_seconds(f"/results?wait={MAX_WAIT * 100}") == MAX_WAIT
    assert wait_seconds("/results?wait=inf") == MAX_WAIT
    assert wait_seconds("/results?wait=1e999999") == MAX_WAIT
    for junk in ("nan", "soon", ""):
        assert wait_seconds(f"/results?wait={junk}") == 0.0, junk
