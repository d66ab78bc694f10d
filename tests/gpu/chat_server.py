"""A minimal OpenAI-compatible chat server on top of transformers' ``generate``: the
stand-in engine for ``paths.py`` where ``transformers serve`` cannot run (its serving
extras, fastapi and uvicorn, missing). It answers ``GET /v1/models`` (once the model is
loaded) and ``POST /v1/chat/completions`` with text and ``image_url`` (data: URL) parts,
one request at a time; nothing else.

    python tests/gpu/chat_server.py MODEL_DIR --port 8000 --device cuda
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def load(model_dir: str, device: str) -> tuple[Any, Any]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)  # type: ignore[no-untyped-call]
    return model.to(device).eval(), processor  # type: ignore[arg-type]


def messages_for(body: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Any]]:
    """The chat template's messages and the images, from an OpenAI request."""
    from PIL import Image

    out: list[dict[str, Any]] = []
    images: list[Any] = []
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": message["role"], "content": content})
            continue
        parts: list[dict[str, Any]] = []
        for part in content or []:
            if part.get("type") == "image_url":
                url = part["image_url"]["url"]
                if not url.startswith("data:"):
                    raise ValueError("only data: image URLs are served here")
                raw = base64.b64decode(url.split(",", 1)[1])
                images.append(Image.open(io.BytesIO(raw)).convert("RGB"))
                parts.append({"type": "image"})
            elif part.get("type") == "text":
                parts.append({"type": "text", "text": part["text"]})
        out.append({"role": message["role"], "content": parts})
    return out, images


def serve(model_dir: str, host: str, port: int, device: str) -> None:
    import torch

    model, processor = load(model_dir, device)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, doc: dict[str, Any]) -> None:
            data = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                entry = {"id": model_dir, "object": "model", "created": 0, "owned_by": "local"}
                self._send(200, {"object": "list", "data": [entry]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                messages, images = messages_for(body)
                text = processor.apply_chat_template(messages, add_generation_prompt=True)
                inputs = processor(text=[text], images=images or None, return_tensors="pt")
                inputs = inputs.to(device)
                limit = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
                with lock, torch.inference_mode():
                    ids = model.generate(**inputs, max_new_tokens=limit, do_sample=False)
                new = ids[0, inputs["input_ids"].shape[1] :]
                answer = processor.decode(new, skip_special_tokens=True)
            except (ValueError, KeyError, TypeError) as exc:
                self._send(400, {"error": {"message": str(exc)}})
                return
            prompt, completion = int(inputs["input_ids"].shape[1]), int(new.shape[0])
            self._send(
                200,
                {
                    "id": f"chatcmpl-{uuid.uuid4().hex}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model_dir,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": answer},
                            "finish_reason": "length" if completion >= limit else "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt,
                        "completion_tokens": completion,
                        "total_tokens": prompt + completion,
                    },
                },
            )

        def log_message(self, format: str, *args: Any) -> None:
            pass

    ThreadingHTTPServer((host, port), Handler).serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="cuda")
    a = parser.parse_args()
    serve(a.model, a.host, a.port, a.device)
