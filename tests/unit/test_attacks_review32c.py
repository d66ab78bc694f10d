"""Attacks from the third review of issue 32's logged samples: a hostile tenant controls
its runner's ``GET /samples`` answer (anything it writes), and many tenants share one
operator process (the chart's memory limit: 256 MiB).

Tests marked ``DEFECT`` failed on the code they were written against and name the fix."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from lmms_operator.api.runner import (
    SAMPLE_TEXT_LIMIT,
    SAMPLES_MAX_LINE,
    SAMPLES_MAX_RESPONSE,
    LoggedSamples,
    ResultsSummary,
)
from lmms_operator.config import Settings
from lmms_operator.reconcile import samples as sample_maps
from lmms_operator.reconcile.grammar import escape_hidden
from lmms_operator.runnerprotocol import RunnerProtocol
from lmms_runner import samples as runner_samples
from lmms_runner.redact import PATTERNS, Redactor

SUMMARY = {
    "tasks": [{"task": "t", "primary": "acc", "metrics": [{"name": "acc", "value": 0.5}]}],
    "provenance": {"model": "openai", "configHash": "abc"},
}


# --- many runs' samples at once ---------------------------------------------------------------


class _Entry:
    token = "t0ken"
    follow_ups = 0


class _Store:
    def get(self, uid: str) -> dict[str, Any]:
        return {"spec": {"evaluation": {"logSamples": True}}}

    def entry(self, uid: str) -> _Entry:
        return _Entry()


class _Held:
    """Counts the answers the operator holds: from the fetch of /samples until the
    run's results (with the samples) were kept."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.peak = 0

    def add(self, n: int) -> None:
        with self.lock:
            self.now += n
            self.peak = max(self.peak, self.now)


class _Scraper:
    def __init__(self, held: _Held) -> None:
        self.held = held

    async def request(
        self, method: str, url: str, token: str | None = None, wait: float = 0.0
    ) -> dict[str, Any]:
        return SUMMARY if url.endswith("/results") else {}

    async def samples(self, url: str, token: str) -> LoggedSamples:
        self.held.add(1)
        await asyncio.sleep(0.02)  # the answer read, a line at a time
        return LoggedSamples()


class _Runs:
    def __init__(self, held: _Held) -> None:
        self.held, self.kept = held, 0

    def results(self, uid: str, summary: ResultsSummary, image: str | None, samples: Any) -> None:
        time.sleep(0.05)  # the ConfigMaps made, the status patched
        self.kept += 1
        self.held.add(-1)


def test_the_operator_holds_a_few_samples_answers_at_a_time_whatever_the_runs() -> None:
    """DEFECT, fixed (high: tenants could OOM-kill the operator every tenant shares).

    One ``GET /samples`` answer is bounded (3.5 MiB), but not how many the operator
    holds at once: each run's scrape fetches its own, on as many runs as finish
    together (the scrape semaphore bounds only the fetch, 32 of them, and frees its slot
    before the answer is read and kept). Measured for one answer of records whose text
    is C1 control characters (each 2 bytes, written ``\\x85`` in the ConfigMap): the
    3.5 MiB body, 8.5 MiB of kept lines, then 15 MiB at its peak while the ConfigMaps'
    data is joined (7.3 MB in 8 maps), before the request bodies are encoded. 32 runs
    of one tenant finishing together (a dummy model, no GPU, answering at once) hold
    ~500 MiB: over the chart's 256 MiB limit; the operator restarts, and the same
    runners, still holding their results, kill it again.

    Now a run's samples are fetched, read and kept within one of SAMPLES_SLOTS slots
    (2) of the operator's; the others wait holding nothing."""
    held = _Held()
    runs = _Runs(held)
    proto = RunnerProtocol(Settings(), _Store(), runs, None, None, None)  # type: ignore[arg-type]
    proto.scraper = _Scraper(held)  # type: ignore[assignment]
    pod = {"metadata": {"name": "p", "namespace": "team-a"}, "status": {"podIP": "10.0.0.1"}}

    async def main() -> None:
        await asyncio.gather(
            *(
                proto._collect(f"uid-{n}", f"j{n}", {0: pod}, {0: 0.0}, shards=False)
                for n in range(16)
            )
        )

    asyncio.run(main())
    assert runs.kept == 16
    assert held.peak <= 2, f"{held.peak} samples answers held at once"


# --- the cost of one answer -----------------------------------------------------------------


def test_text_is_cut_before_it_is_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    """DEFECT, fixed (low: CPU of the shared process, with the GIL held).

    ``read`` escaped a record's whole target and response, then cut them to MAX_TEXT
    (800) characters: a line of SAMPLES_MAX_LINE bytes of hidden characters (U+0085,
    2 bytes each) made ~16,000 ``hidden`` calls to keep 200. Measured: 0.8 s of CPU for
    one 3.5 MiB answer, on a thread that holds the GIL, 50 times the cost of plain text.
    Now the text is cut to MAX_TEXT characters before it is escaped (an escape is
    never shorter than its character): the same records, the same lines."""
    text = "\u0085" * ((SAMPLES_MAX_LINE - 100) // 4)
    line = json.dumps({"id": 1, "target": text, "response": text}, ensure_ascii=False).encode()
    assert len(line) <= SAMPLES_MAX_LINE
    body = b'{"task":"t","count":1}\n' + (line + b"\n") * (SAMPLES_MAX_RESPONSE // len(line))
    seen = [0]

    def counted(text: str, keep: str = "") -> str:
        seen[0] += len(text)
        return escape_hidden(text, keep)

    monkeypatch.setattr(sample_maps, "escape_hidden", counted)
    logged = sample_maps.read(body)
    [task] = logged.tasks
    assert task.lines and all(len(line) < 3 * sample_maps.MAX_TEXT for line in task.lines)
    record = json.loads(task.lines[0])
    assert record["target"] == ("\\x85" * sample_maps.MAX_TEXT)[: sample_maps.MAX_TEXT]
    per_record = seen[0] / len(task.lines)
    assert per_record <= 2 * sample_maps.MAX_TEXT + 100, f"{per_record:.0f} characters escaped"


# --- secrets in the samples ---------------------------------------------------------------------

SECRET = "s3cr3t-Token-Value-0123456789abcdefABCDEF"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hs.integers(0, SAMPLE_TEXT_LIMIT + 10), hs.sampled_from(["target", "filtered_resps"]))
def test_no_part_of_a_secret_reaches_a_record_across_the_cut(at: int, field: str) -> None:
    """DEFECT, fixed (medium: a run's secret, in part, in a ConfigMap any reader of the
    namespace may read, and in the tenant's compare output).

    The runner cut a target or response to SAMPLE_TEXT_LIMIT (200) characters, then
    redacted the run's secrets from what was left: a secret that the cut split (a model
    that echoes the prompt's key, a judge's error text) was no longer the secret and was
    kept in part: with the key at character 170, its first 30 characters. The token
    shapes (``hf_...``, ``sk-...``) too, once fewer than 20 (16) characters were left.
    Now the whole text is redacted, then cut."""
    redact = Redactor([SECRET])
    for secret in (SECRET, "hf_" + "A1b2C3d4E5" * 4, "sk-" + "proj_AbC123-" * 3):
        sample = {"doc_id": 1, field: "x" * at + secret + " and more"}
        rec = runner_samples.record(sample, redact)
        assert rec is not None
        text = rec.target if field == "target" else rec.response
        assert text is not None
        # Its first 4 characters: the text around it is x's.
        assert secret[:4] not in text, f"{text[at:]!r} keeps part of the secret"
        assert not any(p.search(text) for p in PATTERNS)
