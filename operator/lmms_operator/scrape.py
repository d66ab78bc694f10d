"""Pulls progress and results from runner pods (the runner needs no Kubernetes access).

One shared HTTP session; a semaphore bounds how many runners are contacted at once, and
every request has a timeout, so a thousand runs never open a thousand connections.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from .config import Settings
from .errors import ScrapeError

__all__ = ["ScrapeError", "Scraper"]


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
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self._semaphore:
            try:
                async with self._client().request(method, url, headers=headers) as resp:
                    if resp.status >= 400:
                        raise ScrapeError(f"{method} {url}: HTTP {resp.status}")
                    return await resp.json(content_type=None)
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                raise ScrapeError(f"{method} {url}: {type(exc).__name__} {exc}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
