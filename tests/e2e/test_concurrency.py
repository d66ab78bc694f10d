"""Concurrent requests to an OpenAI-compatible model, and progress that counts its
answers: the runner with the real lmms-eval 0.7.3 against the loopback model server."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_runner import ModelServer, Runner, run_config
from tests.fixtures import colortask

pytestmark = pytest.mark.e2e


def stats(server: ModelServer) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/stats", timeout=5) as r:
        result: dict[str, object] = json.load(r)
        return result


def test_progress_counts_the_answers_at_lmms_evals_default_concurrency(tmp_path: Path) -> None:
    """160 documents at lmms-eval's default concurrency (32 requests in flight) against a
    server that answers each after 1 s: the answers come in bursts of up to 32, which
    lmms-eval's bar redraws only at each burst's first answer. /progress must move with
    the answers: between bursts it says exactly how many the server has given."""
    server = ModelServer(delay=1.0)
    try:
        tasks = colortask.write(tmp_path / "tasks", "colors", samples=160)
        config = run_config(tmp_path, server.url, ["colors"])
        doc = yaml.safe_load(config.read_text())
        del doc["spec"]["model"]["args"]["num_concurrent"]  # lmms-eval's default
        config.write_text(yaml.safe_dump(doc))
        runner = Runner(tmp_path, config, tasks)
        percents: list[float] = []
        exact: set[int] = set()  # answer counts /progress gave while no answer came
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and runner.proc.poll() is None:
            before = server.requests()
            try:
                code, progress = runner.get("/progress")
            except OSError:
                time.sleep(0.1)
                continue
            after = server.requests()
            assert code == 200
            percents.append(progress["percent"])
            done, total = progress["done"], progress["total"]
            if before == after == done and 0 < done < total:
                exact.add(done)
            time.sleep(0.05)
        assert runner.wait(60) == 0, runner.output()[-3000:]
        assert percents == sorted(percents), "progress went backwards"
        between = sorted({p for p in percents if 0 < p < 100})
        assert len(between) >= 3, f"progress read only {sorted(set(percents))}"
        assert len(exact) >= 3, (sorted(exact), between)
        assert server.requests() == 160
        # lmms-eval's default: 32 requests in flight (the server held that many at once).
        assert stats(server)["peak"] == 32
    finally:
        server.stop()


def test_concurrency_from_the_spec_bounds_the_requests_in_flight(tmp_path: Path) -> None:
    """``spec.model.concurrency: 4`` in a configuration run by hand: the server holds 4
    requests at once, never more."""
    server = ModelServer(delay=0.2)
    try:
        tasks = colortask.write(tmp_path / "tasks", "colors", samples=24)
        config = run_config(tmp_path, server.url, ["colors"])
        doc = yaml.safe_load(config.read_text())
        del doc["spec"]["model"]["args"]["num_concurrent"]
        doc["spec"]["model"]["concurrency"] = 4
        config.write_text(yaml.safe_dump(doc))
        runner = Runner(tmp_path, config, tasks)
        assert runner.wait(240) == 0, runner.output()[-3000:]
        assert stats(server)["peak"] == 4
        assert "num_concurrent=4" in runner.output()
    finally:
        server.stop()
