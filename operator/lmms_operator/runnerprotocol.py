"""The runner protocol, in one place: how the operator talks to runner pods, which need
no Kubernetes credentials. It pulls, like Prometheus:

- ``GET /progress`` of every running run when it is due: every ``scrape_interval``, and
  sooner, a few times, when its runner is about to finish (``progress.follow_up``);
- ``GET /results`` with the run's bearer token once a runner is done, or as a long poll
  (``?wait=``) while it is about to be, answered the moment its results are ready;
- ``GET /samples`` with the same token, right after the results, for a run that logs its
  samples (``spec.evaluation.logSamples``): JSON Lines, read a line at a time within
  bounds of bytes, records and tasks (``reconcile.samples.read``), by SAMPLES_SLOTS runs
  at a time (fetched, read and kept); a failure costs the samples, never the results;
- ``POST /ack`` once the results are kept, so that the runner exits and frees its GPUs;
- a fan-out's shards: each runner is scraped, each shard's results are kept as they come
  and acknowledged, and the last one publishes the merged set.

The token is read once per run from the Secret the run's Job mounts. One shared HTTP
session; a semaphore bounds how many runners are contacted at once, long polls have
slots of their own (a quarter of ``scrape_concurrency``), every request has a timeout,
and an answer is bounded (the runner is the tenant's code). What the answers change is
decided by ``reconcile.progress`` and ``reconcile.publishing`` through ``Runs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import aiohttp

from . import errors, k8s
from .api.runner import SAMPLES_MAX_RESPONSE, LoggedSamples, ResultsSummary, RunnerProgress
from .clock import Clock
from .config import Settings
from .metrics import Metrics
from .reconcile import pods as pod_facts
from .reconcile import progress as prog
from .reconcile import reasons as R
from .reconcile import samples as sample_maps
from .store import Store

log = logging.getLogger("lmms.runnerprotocol")

#: The most a runner's answer (/progress, /results) may hold: results over the 1 MiB
#: ConfigMap limit go to the object store anyway (/samples: SAMPLES_MAX_RESPONSE).
MAX_RESPONSE = 4 * 1024 * 1024
#: The most runs whose logged samples are held at once, from the fetch of /samples until
#: they are kept (one holds up to ~15 MiB at its peak: the answer, its lines, the maps).
SAMPLES_SLOTS = 2


class Runs(Protocol):
    """What the protocol asks of the controller: each call decides and applies, under
    the run's one-writer-at-a-time rule (they block: the protocol runs them on threads)."""

    def answered(
        self, uid: str, answers: Mapping[int, RunnerProgress], pods: Mapping[int, str]
    ) -> None: ...

    def unanswered(self, uid: str, message: str) -> None: ...

    def results(
        self, uid: str, summary: ResultsSummary, image: str | None, samples: LoggedSamples | None
    ) -> None: ...

    def shard_results(
        self, uid: str, index: int, summary: ResultsSummary, image: str | None
    ) -> None: ...


class Scraper:
    """The HTTP client of the runners."""

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
        """The runner's JSON answer (``fetch``)."""
        body = await self.fetch(method, url, token, wait)
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:
            # RecursionError: JSON nested deeper than the interpreter's limit.
            raise errors.ScrapeError(f"{method} {url}: {type(exc).__name__} {exc}") from None

    async def fetch(
        self,
        method: str,
        url: str,
        token: str | None = None,
        wait: float = 0.0,
        limit: int = MAX_RESPONSE,
    ) -> bytes:
        """The runner's answer. One over ``limit`` bytes is refused without being read
        whole. ``wait`` > 0: a long poll (``?wait=``, held by the runner up to that many
        seconds) in a waiting slot, or a plain request when every waiting slot is taken."""
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
                        raise errors.ScrapeError(f"{method} {url}: HTTP {resp.status}")
                    if (resp.content_length or 0) > limit:
                        raise errors.ScrapeError(f"{method} {url}: answer over {limit} bytes")
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in resp.content.iter_chunked(64 * 1024):
                        size += len(chunk)
                        if size > limit:
                            raise errors.ScrapeError(f"{method} {url}: answer over {limit} bytes")
                        chunks.append(chunk)
                    return b"".join(chunks)
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                raise errors.ScrapeError(f"{method} {url}: {type(exc).__name__} {exc}") from None

    async def samples(self, url: str, token: str) -> LoggedSamples:
        """A runner's logged samples (``GET /samples``, JSON Lines): at most
        ``SAMPLES_MAX_RESPONSE`` bytes, read a line at a time within the bounds of
        ``reconcile.samples.read`` (on a thread: up to SAMPLES_MAX_RECORDS records)."""
        body = await self.fetch("GET", url, token=token, limit=SAMPLES_MAX_RESPONSE)
        return await asyncio.get_running_loop().run_in_executor(None, sample_maps.read, body)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class RunnerProtocol:
    """Scrapes the runners of the store's running runs and collects their results."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        runs: Runs,
        clock: Clock,
        metrics: Metrics,
        api: k8s.Api,
    ) -> None:
        self.settings, self.store, self.runs, self.clock = settings, store, runs, clock
        self.metrics, self.api = metrics, api
        self.scraper = Scraper(settings)
        self._scraping: dict[str, asyncio.Task[None]] = {}  # runs with a scrape in flight
        self._samples_slots = asyncio.Semaphore(SAMPLES_SLOTS)

    @property
    def tick(self) -> float:
        """How often the scrape loop looks for runs that are due."""
        return min(prog.FOLLOW_UP / 2, self.settings.scrape_interval)

    async def scrape(self) -> None:
        """Starts the scrape of every running run that is due and has none in flight; a
        slow runner (up to ``scrape_timeout``) delays no other run's scrape."""
        now = self.clock.monotonic()
        for uid in self.store.uids():
            entry = self.store.entry(uid)
            if entry is None or entry.next_scrape > now or uid in self._scraping:
                continue
            status = (self.store.get(uid) or {}).get("status") or {}
            if status.get("phase") != R.RUNNING or status.get("resultsConfigMap"):
                continue
            entry.next_scrape = now + self.settings.scrape_interval
            self._scraping[uid] = asyncio.create_task(self._scrape_one(uid, status))

    async def stop(self) -> None:
        for task in list(self._scraping.values()):
            task.cancel()
        await self.scraper.close()

    async def _scrape_one(self, uid: str, status: Mapping[str, Any]) -> None:
        try:
            job_name = status.get("jobName")
            if job_name and len(status.get("shards") or []) > 1:
                await self._scrape_shards(uid, status, str(job_name))
            elif job_name:
                await self._scrape_single(uid, str(job_name))
        except Exception as exc:
            log.warning("scrape failed: %s", exc)
        finally:
            self._scraping.pop(uid, None)

    async def _in_thread(self, fn: Any, *args: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def _follow_up(self, uid: str, progress: Iterable[RunnerProgress]) -> None:
        """Brings the run's next scrape forward when a runner is about to finish."""
        entry = self.store.entry(uid)
        if entry is None:
            return
        delay = prog.follow_up(progress, self.settings.scrape_interval, entry.follow_ups)
        if delay is None:
            entry.follow_ups = 0  # the streak is over
            return
        entry.follow_ups += 1
        entry.next_scrape = min(entry.next_scrape, self.clock.monotonic() + delay)

    def _running_pods(self, uid: str, job_name: str) -> dict[int, dict[str, Any]]:
        """The running pod of each Job index (its newest): node 0's holds the results of a
        multi-node run, each shard's its own."""
        out: dict[int, dict[str, Any]] = {}
        pods = sorted(
            self.store.pods_of(uid, job_name),
            key=lambda p: p["metadata"].get("creationTimestamp") or "",
        )
        for pod in pods:
            status = pod.get("status") or {}
            if status.get("phase") == R.POD_RUNNING and status.get("podIP"):
                out[pod_facts.completion_index(pod)] = pod
        return out

    def _base(self, pod: Mapping[str, Any]) -> str:
        return f"http://{pod['status']['podIP']}:{self.settings.runner_port}"

    async def _progress(self, pods: Mapping[int, Mapping[str, Any]]) -> dict[int, Any]:
        """Every pod's /progress: a RunnerProgress or the exception it ended in."""
        indexes = sorted(pods)
        started = self.clock.monotonic()
        answers = await asyncio.gather(
            *(self.scraper.request("GET", f"{self._base(pods[i])}/progress") for i in indexes),
            return_exceptions=True,
        )
        if len(indexes) == 1 and not isinstance(answers[0], BaseException):
            self.metrics.scrape_duration.observe(self.clock.monotonic() - started)
        out: dict[int, Any] = {}
        for i, answer in zip(indexes, answers, strict=True):
            try:
                if isinstance(answer, BaseException):
                    raise answer
                out[i] = RunnerProgress.model_validate(answer)
                self.metrics.scrapes.labels("ok").inc()
            except (errors.ScrapeError, ValueError) as exc:
                self.metrics.scrapes.labels("error").inc()
                out[i] = exc
        return out

    async def _heard(
        self, uid: str, pods: Mapping[int, Mapping[str, Any]], answers: Mapping[int, Any]
    ) -> dict[int, RunnerProgress]:
        """Tells the controller who answered (RunnerReachable, progress), or, once no
        runner has answered for ``progress.UNREACHABLE_AFTER`` seconds, that none does."""
        progress = {i: a for i, a in answers.items() if isinstance(a, RunnerProgress)}
        entry = self.store.entry(uid)
        if entry is None:
            return {}
        if progress:
            entry.unanswered_since = None
            names = {i: str(pods[i]["metadata"]["name"]) for i in progress}
            await self._in_thread(self.runs.answered, uid, progress, names)
            return progress
        first = min(answers)
        now = self.clock.monotonic()
        if entry.unanswered_since is None:
            entry.unanswered_since = now
        silent = now - entry.unanswered_since
        if silent >= prog.UNREACHABLE_AFTER:  # a runner that just started may not listen yet
            message = (
                f"cannot scrape the runner of pod {pods[first]['metadata']['name']} "
                f"(no answer for {silent:.0f}s): {answers[first]}"
            )
            await self._in_thread(self.runs.unanswered, uid, message)
        return {}

    async def _token(self, uid: str, namespace: str, job_name: str) -> str | None:
        entry = self.store.entry(uid)
        if entry is None:
            return None
        if entry.token is None:
            loop = asyncio.get_running_loop()
            entry.token = await loop.run_in_executor(
                None, self.api.read_secret_value, namespace, f"{job_name}-token", "token"
            )
        return entry.token or None

    def _waits(
        self, progress: Mapping[int, RunnerProgress], collected: set[int]
    ) -> dict[int, float]:
        """Which runners to ask for their results, and how long each may hold the request:
        finished ones at once, those near their end with a long poll."""
        wait = prog.results_wait(self.settings.scrape_interval)
        waits: dict[int, float] = {}
        for i, p in progress.items():
            if i in collected or p.reason == prog.EVALUATION_FAILED:
                continue
            if p.phase in ("done", "failed"):
                waits[i] = 0.0
            elif prog.near_end(p, wait):
                waits[i] = wait
        return waits

    async def _scrape_single(self, uid: str, job_name: str) -> None:
        """Pulls /progress into status.progress; once the runner is done, pulls /results,
        publishes them and acknowledges, so that the runner exits."""
        pods = self._running_pods(uid, job_name)
        if not pods:
            return
        first = min(pods)
        progress = await self._heard(
            uid, {first: pods[first]}, await self._progress({first: pods[first]})
        )
        if not progress:
            return  # unanswered: the follow-up streak stands
        self._follow_up(uid, progress.values())
        waits = self._waits(progress, set())
        if not waits:
            return
        await self._collect(uid, job_name, {first: pods[first]}, waits, shards=False)

    async def _scrape_shards(self, uid: str, status: Mapping[str, Any], job_name: str) -> None:
        """A run with parallelism > 1: every shard's runner is scraped; progress is
        aggregated; each finished shard's results are kept (then acknowledged, so that
        its pod exits and frees its GPUs) and the last one publishes the merged set."""
        pods = self._running_pods(uid, job_name)
        if not pods:
            return
        progress = await self._heard(uid, pods, await self._progress(pods))
        if not progress:
            return
        collected = {
            int(s.get("index", -1)) for s in status.get("shards") or [] if s.get("resultsCollected")
        }
        self._follow_up(uid, [p for i, p in progress.items() if i not in collected])
        waits = self._waits(progress, collected)
        if waits:
            await self._collect(uid, job_name, pods, waits, shards=True)

    async def _collect(
        self,
        uid: str,
        job_name: str,
        pods: Mapping[int, Mapping[str, Any]],
        waits: Mapping[int, float],
        *,
        shards: bool,
    ) -> None:
        """Fetches the results of the runners in ``waits``; each is kept as soon as it
        comes, then acknowledged (the runner may exit while the next is kept)."""
        namespace = pods[next(iter(waits))]["metadata"]["namespace"]
        token = await self._token(uid, namespace, job_name)
        if not token:
            return

        async def fetch(i: int) -> tuple[int, ResultsSummary | None]:
            url = f"{self._base(pods[i])}/results"
            try:
                answer = await self.scraper.request("GET", url, token=token, wait=waits[i])
                return i, ResultsSummary.model_validate(answer)
            except (errors.ScrapeError, ValueError) as exc:
                # Not ready within the wait is the usual case of a long poll.
                (log.debug if waits[i] else log.warning)(
                    "results of %s (index %d) not fetched yet: %s", job_name, i, exc
                )
                return i, None

        async def samples(i: int) -> LoggedSamples | None:
            """The runner's logged samples, when the run logs them (a single-pod run)."""
            spec = (self.store.get(uid) or {}).get("spec") or {}
            if shards or not (spec.get("evaluation") or {}).get("logSamples"):
                return None
            try:
                logged = await self.scraper.samples(f"{self._base(pods[i])}/samples", token)
            except errors.ScrapeError as exc:
                log.warning("logged samples of %s not fetched: %s", job_name, str(exc)[:300])
                return None
            if logged.left_out:
                log.warning("logged samples of %s: %s left out", job_name, logged.left_out)
            return logged

        async def ack(i: int) -> None:
            try:
                await self.scraper.request("POST", f"{self._base(pods[i])}/ack", token=token)
            except errors.ScrapeError as exc:
                log.warning(
                    "could not acknowledge the results of %s (index %d): %s", job_name, i, exc
                )

        fetches = [asyncio.ensure_future(fetch(i)) for i in sorted(waits)]
        acks: list[asyncio.Future[None]] = []
        try:
            for fetched in asyncio.as_completed(fetches):
                i, summary = await fetched
                if summary is None:
                    continue
                image = pod_facts.image_id([dict(pods[i])])
                if shards:
                    await self._in_thread(self.runs.shard_results, uid, i, summary, image)
                else:
                    spec = (self.store.get(uid) or {}).get("spec") or {}
                    logs = (spec.get("evaluation") or {}).get("logSamples")
                    async with self._samples_slots if logs else contextlib.nullcontext():
                        kept = await samples(i)
                        await self._in_thread(self.runs.results, uid, summary, image, kept)
                acks.append(asyncio.ensure_future(ack(i)))
        finally:
            for pending in fetches:
                pending.cancel()  # stopping: no fetch outlives the scrape
            # Whatever stopped the loop, a kept result is acknowledged (it is not fetched
            # again), so that its runner exits and frees its GPUs.
            await asyncio.gather(*acks, return_exceptions=True)
