"""Pulls progress and results from runner pods (the runner needs no Kubernetes access).

One shared HTTP session; a semaphore bounds how many runners are contacted at once, and
every request has a timeout, so a thousand runs never open a thousand connections.
A runner near its end (``near_end``) is asked for its results with a long poll (``/results?wait=``,
``results_wait``), in slots of their own (a quarter of ``scrape_concurrency``): a held
request never delays another run's scrape, and when those slots are taken the request
is a plain one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any

import aiohttp

from .api.runner import RunnerProgress
from .config import Settings
from .errors import ScrapeError

__all__ = [
    "FAST_FOLLOW_UPS",
    "FINISHING",
    "FOLLOW_UP",
    "MAX_RESPONSE",
    "RESULTS_WAIT",
    "ScrapeError",
    "Scraper",
    "follow_up",
    "near_end",
    "results_wait",
]

#: The most a runner's answer (/progress, /results) may hold: results over the 1 MiB
#: ConfigMap limit go to the object store anyway.
MAX_RESPONSE = 4 * 1024 * 1024

#: Seconds to a follow-up scrape of a runner about to finish: the first ``FAST_FOLLOW_UPS``
#: in a row come this soon, each further one waits twice as long as the one before, up to
#: the regular interval.
FOLLOW_UP = 0.5
FAST_FOLLOW_UPS = 4

#: Runner phases past the last answer, before the results are ready.
FINISHING = ("postprocessing", "uploading")

#: The longest the operator asks a runner near its end to hold ``/results`` until they
#: are ready (a long poll): its results are collected, and its pod and GPUs freed, the
#: moment they are, instead of at the next scrape. A long poll's timeout is its wait plus
#: the scrape timeout.
RESULTS_WAIT = 5.0


def results_wait(interval: float) -> float:
    """Seconds of ``/results?wait=`` for a scrape ``interval``: up to the next regular
    scrape, at most ``RESULTS_WAIT``."""
    return max(0.0, min(RESULTS_WAIT, interval))


def near_end(progress: RunnerProgress, wait: float) -> bool:
    """Whether a runner is worth a long poll of ``wait`` seconds for its results: past its
    last answer, or expecting it within the wait."""
    if not wait or progress.reason == "EvaluationFailed":
        return False
    if progress.phase in FINISHING:
        return True
    eta = progress.eta_seconds
    return progress.phase == "evaluating" and eta is not None and eta <= wait


def follow_up(progress: Iterable[RunnerProgress], interval: float, streak: int) -> float | None:
    """When to scrape a run again, sooner than the regular ``interval``, because one of its
    runners (``progress``: those not yet collected) will finish before then: it is past its
    last answer (postprocessing, uploading, done but not collected) or expects to be within
    the interval (``eta_seconds``). A finished runner holds its results, and its GPUs,
    until the operator collects them: without a follow-up that waits half an interval on
    average. ``streak`` is the number of follow-ups in a row before this one: after
    ``FAST_FOLLOW_UPS`` of them the delay doubles with each, so a runner that says it is
    finishing and never does (the runner is the tenant's code) costs a few scrapes more,
    then the regular rate (``interval``) for as long as it says so. None: no runner is
    about to finish (the streak is over)."""
    soonest: float | None = None
    for p in progress:
        if p.reason == "EvaluationFailed":
            continue  # nothing to collect: the runner exits
        if p.phase in ("postprocessing", "uploading", "done", "failed"):
            due = 0.0
        elif p.phase == "evaluating" and p.eta_seconds is not None and p.eta_seconds < interval:
            due = max(0.0, p.eta_seconds)
        else:
            continue
        soonest = due if soonest is None else min(soonest, due)
    if soonest is None:
        return None
    backoff = FOLLOW_UP * (1 << min(32, max(0, streak - FAST_FOLLOW_UPS + 1)))
    return min(interval, max(soonest, backoff))


class Scraper:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._semaphore = asyncio.Semaphore(settings.scrape_concurrency)
        self.waiting_slots = max(1, settings.scrape_concurrency // 4)
        self._waiting = asyncio.Semaphore(self.waiting_slots)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.scrape_timeout),
                connector=aiohttp.TCPConnector(
                    limit=self.settings.scrape_concurrency + self.waiting_slots
                ),
            )
        return self._session

    async def request(
        self, method: str, url: str, token: str | None = None, wait: float = 0.0
    ) -> Any:
        """The runner's JSON answer. A runner is the tenant's code: an answer over
        ``MAX_RESPONSE`` bytes is refused without being read whole. ``wait`` > 0: a long
        poll (``?wait=``, held by the runner up to that many seconds) in a waiting slot,
        or a plain request when every waiting slot is taken."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        timeout = aiohttp.ClientTimeout(total=self.settings.scrape_timeout)
        if wait > 0 and not self._waiting.locked():
            slot = self._waiting
            url = f"{url}{'&' if '?' in url else '?'}wait={wait:g}"
            timeout = aiohttp.ClientTimeout(total=wait + self.settings.scrape_timeout)
        else:
            slot = self._semaphore
        async with slot:
            try:
                async with self._client().request(
                    method, url, headers=headers, timeout=timeout
                ) as resp:
                    if resp.status >= 400:
                        raise ScrapeError(f"{method} {url}: HTTP {resp.status}")
                    if (resp.content_length or 0) > MAX_RESPONSE:
                        raise ScrapeError(f"{method} {url}: answer over {MAX_RESPONSE} bytes")
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in resp.content.iter_chunked(64 * 1024):
                        size += len(chunk)
                        if size > MAX_RESPONSE:
                            raise ScrapeError(f"{method} {url}: answer over {MAX_RESPONSE} bytes")
                        chunks.append(chunk)
                    return json.loads(b"".join(chunks))
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                raise ScrapeError(f"{method} {url}: {type(exc).__name__} {exc}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
