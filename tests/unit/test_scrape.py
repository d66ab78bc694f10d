"""The scraper against a real local HTTP server: answers are bounded."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lmms_operator import errors
from lmms_operator.config import Settings
from lmms_operator.scrape import MAX_RESPONSE, Scraper


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/progress":
            body = json.dumps({"phase": "running", "percent": 5}).encode()
        else:  # a runner that answers without end, and says nothing of the length
            body = b'{"tasks": ["' + b"x" * (MAX_RESPONSE + 10) + b'"]}'
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server() -> str:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"  # type: ignore[misc]
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
