"""The scraper against a real local HTTP server: answers are bounded; long polls take
slots of their own. When a run is scraped again sooner than the regular interval
(``follow_up``)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lmms_operator import errors
from lmms_operator.api.runner import RunnerProgress
from lmms_operator.config import Settings
from lmms_operator.reconcile.progress import (
    FOLLOW_UP,
    RESULTS_WAIT,
    follow_up,
    near_end,
    results_wait,
)
from lmms_operator.runnerprotocol import MAX_RESPONSE, Scraper

RELEASE = threading.Event()  # lets the held long polls answer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if "slow" in self.path:  # longer than the scrape timeout of the test
            time.sleep(0.8)
            body = json.dumps({"path": self.path}).encode()
        elif "wait=" in self.path:  # a long poll: held until released
            RELEASE.wait(10)
            body = json.dumps({"path": self.path}).encode()
        elif self.path.startswith("/echo"):
            body = json.dumps({"path": self.path}).encode()
        elif self.path == "/progress":
            body = json.dumps({"phase": "running", "percent": 5}).encode()
        else:  # a runner that answers without end, and says nothing of the length
            body = b'{"tasks": ["' + b"x" * (MAX_RESPONSE + 10) + b'"]}'
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_answers_are_bounded(server: str) -> None:
    async def main() -> None:
        scraper = Scraper(Settings(scrape_timeout=10))
        try:
            assert (await scraper.request("GET", f"{server}/progress"))["percent"] == 5
            with pytest.raises(errors.ScrapeError, match="over"):
                await scraper.request("GET", f"{server}/results")
        finally:
            await scraper.close()

    asyncio.run(main())


def test_long_polls_take_slots_of_their_own(server: str) -> None:
    """A held long poll delays no other scrape; with every waiting slot taken, a further
    one goes as a plain request, answered at once."""

    async def main() -> None:
        RELEASE.clear()
        scraper = Scraper(Settings(scrape_timeout=10, scrape_concurrency=4))
        assert scraper.waiting_slots == 1
        try:
            held = asyncio.ensure_future(scraper.request("GET", f"{server}/echo", wait=2))
            await asyncio.sleep(0.2)
            assert not held.done()
            plain = await asyncio.wait_for(
                scraper.request("GET", f"{server}/echo?a=1", wait=2), timeout=5
            )
            assert plain == {"path": "/echo?a=1"}  # no wait: the slot is taken
            assert (await asyncio.wait_for(scraper.request("GET", f"{server}/progress"), 5))[
                "percent"
            ] == 5
            RELEASE.set()
            assert await asyncio.wait_for(held, timeout=5) == {"path": "/echo?wait=2"}
            again = await asyncio.wait_for(
                scraper.request("GET", f"{server}/echo?a=1", wait=1.5), timeout=5
            )
            assert again == {"path": "/echo?a=1&wait=1.5"}  # the slot is free again
        finally:
            RELEASE.set()
            await scraper.close()

    asyncio.run(main())


def test_a_long_poll_waits_up_to_the_next_regular_scrape() -> None:
    assert results_wait(5.0) == RESULTS_WAIT == 5.0
    assert results_wait(2.0) == 2.0
    assert results_wait(60.0) == RESULTS_WAIT


def test_a_long_poll_may_take_longer_than_the_scrape_timeout(server: str) -> None:
    """Its timeout is its wait plus the scrape timeout; a plain request keeps the scrape
    timeout."""

    async def main() -> None:
        scraper = Scraper(Settings(scrape_timeout=0.5))
        try:
            answer = await scraper.request("GET", f"{server}/echo-slow", wait=2)
            assert answer == {"path": "/echo-slow?wait=2"}
            with pytest.raises(errors.ScrapeError, match="TimeoutError"):
                await scraper.request("GET", f"{server}/slow")
        finally:
            await scraper.close()

    asyncio.run(main())


def test_a_long_poll_only_for_a_runner_near_its_end() -> None:
    assert near_end(_p("postprocessing"), 2.0)
    assert near_end(_p("uploading"), 2.0)
    assert near_end(_p("evaluating", eta=1.5), 2.0)
    assert not near_end(_p("evaluating", eta=3.0), 2.0)  # the follow-up scrape comes first
    assert not near_end(_p("evaluating"), 2.0)  # no ETA yet
    assert not near_end(_p("starting"), 2.0)
    assert not near_end(_p("loading"), 2.0)
    assert not near_end(_p("failed", reason="EvaluationFailed"), 2.0)  # nothing to collect
    assert not near_end(_p("postprocessing"), 0.0)  # no long poll


def _p(phase: str, eta: float | None = None, reason: str | None = None) -> RunnerProgress:
    return RunnerProgress.model_validate({"phase": phase, "eta_seconds": eta, "reason": reason})


def test_a_runner_far_from_its_end_waits_for_the_regular_scrape() -> None:
    assert follow_up([_p("starting")], 5.0, 0) is None
    assert follow_up([_p("loading")], 5.0, 0) is None
    assert follow_up([_p("evaluating", eta=None)], 5.0, 0) is None
    assert follow_up([_p("evaluating", eta=30.0)], 5.0, 0) is None
    assert follow_up([], 5.0, 0) is None


def test_a_runner_past_its_last_answer_is_scraped_again_soon() -> None:
    for phase in ("postprocessing", "uploading", "done", "failed"):
        assert follow_up([_p(phase)], 5.0, 0) == FOLLOW_UP
    # ... unless it failed with nothing to collect
    assert follow_up([_p("failed", reason="EvaluationFailed")], 5.0, 0) is None


def test_a_runner_due_to_finish_within_the_interval_is_scraped_when_it_should() -> None:
    assert follow_up([_p("evaluating", eta=2.0)], 5.0, 0) == 2.0
    assert follow_up([_p("evaluating", eta=0.1)], 5.0, 0) == FOLLOW_UP
    # The soonest of a sharded run's runners decides.
    assert follow_up([_p("evaluating", eta=30.0), _p("evaluating", eta=3.0)], 5.0, 0) == 3.0
    assert follow_up([_p("evaluating", eta=3.0), _p("postprocessing")], 5.0, 0) == FOLLOW_UP


def test_follow_ups_in_a_row_back_off_to_the_regular_rate() -> None:
    """The runner is the tenant's code: one that keeps saying it is finishing costs a few
    scrapes more (7 in about 9 s, against 2 at a 5 s interval), then the regular rate."""
    finishing = [_p("postprocessing", eta=0.0)]
    delays = [follow_up(finishing, 5.0, streak) for streak in range(12)]
    assert delays == [0.5, 0.5, 0.5, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0, 5.0]
    assert follow_up(finishing, 5.0, 10**6) == 5.0
    # Never later than the regular scrape, whatever the runner's ETA says.
    assert follow_up([_p("evaluating", eta=4.9)], 5.0, 9) == 5.0
