"""Transport checks BentoML does not make, before a request reaches an API: JSON bodies only, at
most MAX_BODY_BYTES, valid UTF-8. Each failure is a 4xx JSON {"error": ...}, never a 500.

Pure ASGI, so the body is read once here (at most the limit plus one chunk) and replayed to the
app; a client that lies in Content-Length or streams without one is cut off at the limit too.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 1 << 20  # 1 MiB
JSON_TYPES = ("application/json", "")  # a missing Content-Type is read as JSON, as BentoML does


class RequestLimits:
    """ASGI middleware applying the checks above to every POST."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in JSON_TYPES:
            await _reject(send, 415, f"Content-Type {media!r} is not supported: send application/json")
            return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await _reject(send, 413, f"request body of {int(declared):,} bytes exceeds the "
                                     f"{self.max_body_bytes:,}-byte limit")
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                await _reject(send, 413, f"request body exceeds the {self.max_body_bytes:,}-byte limit")
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            await _reject(send, 400, f"request body is not valid UTF-8 (byte 0x{body[exc.start]:02x} "
                                     f"at offset {exc.start})")
            return
        await self.app(scope, _replay(body, receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that yields the buffered body once, then defers to the real one (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _reject(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
