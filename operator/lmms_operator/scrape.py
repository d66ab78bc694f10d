"""Pulls progress and results from runner pods (the runner needs no Kubernetes access).

One shared HTTP session; a semaphore bounds how many runners are contacted at once, and
every request has a timeout, so a thousand runs never open a thousand connections.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from .config import Settings
from .errors import ScrapeError

__all__ = ["MAX_RESPONSE", "ScrapeError", "Scraper"]

#: The most a runner's answer (/progress, /results) may hold: results over the 1 MiB
#: ConfigMap limit go to the object store anyway.
MAX_RESPONSE = 4 * 1024 * 1024


class Scraper:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._semaphore = asyncio.Semaphore(settings.scrape_concurrency)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.scrape_timeout),
                connector=aiohttp.TCPConnector(limit=self.settings.scrape_concurrency),
            )
        return self._session

    async def request(self, method: str, url: str, token: str | None = None) -> Any:
        """The runner's JSON answer. A runner is the tenant's code: an answer over
        ``MAX_RESPONSE`` bytes is refused without being read whole."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self._semaphore:
            try:
                async with self._client().request(method, url, headers=headers) as resp:
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
