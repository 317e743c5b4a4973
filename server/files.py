"""Event inputs may name only files the same caller uploaded.

Any Gradio event input that carries JSON (the BrowserState store, a dict, a file input) can hold
``{"path": "/any/file", "meta": {"_type": "gradio.FileData"}}``; Gradio then copies that file into
its cache and hands back a ``/gradio_api/file=`` URL, or a handler opens it. Gradio's own "was it
uploaded?" check is skipped for an app mounted with ``mount_gradio_app`` (``has_launched`` stays
False), and even when it runs it accepts anything in the shared cache folder, other users'
exports included.

So every event is checked before Gradio looks at its inputs (:func:`confine_event_files` wraps
the Blocks' ``process_api``, which every event route calls: ``queue/join``, ``run/…``,
``call/…``): each file object, anywhere in any input, must name a file this caller received from
Gradio's upload route (:class:`UploadRecorder` notes them). Callers are told apart by
:mod:`server.identity`: a login or key owns its uploads; anonymous callers (no credentials
configured) share one pool of uploads, whose paths are content hashes, so only a file whose
bytes one already has can be named. Everything else is refused with an error that names no path.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict

import gradio as gr

from .identity import caller_of

ANONYMOUS = "anonymous"
UPLOAD_PATH = "/gradio_api/upload"
REFUSED = (
    "This request names a file that was not uploaded from this page: upload it (Import) and try again. "
    "Files on the server cannot be read this way."
)


class UploadRegistry:
    """The files each caller uploaded (most recent ``per_owner`` kept), by resolved real path."""

    def __init__(self, per_owner: int = 1000):
        self.per_owner = per_owner
        self._by_owner: dict[str, OrderedDict[str, None]] = {}
        self._lock = threading.Lock()

    def add(self, owner: str, paths) -> None:
        """Note ``paths`` (as Gradio's upload route returned them) as uploaded by ``owner``."""
        with self._lock:
            files = self._by_owner.setdefault(owner, OrderedDict())
            for path in paths:
                files[os.path.realpath(path)] = None
                files.move_to_end(os.path.realpath(path))
            while len(files) > self.per_owner:
                files.popitem(last=False)

    def owns(self, owner: str, path: str) -> bool:
        """Whether ``owner`` uploaded the file at ``path`` (``..``, links and URLs resolve to no upload)."""
        with self._lock:
            return os.path.realpath(path) in self._by_owner.get(owner, ())


def _is_file_object(item: dict) -> bool:
    meta = item.get("meta")
    return isinstance(item.get("path"), str) and isinstance(meta, dict) and meta.get("_type") == "gradio.FileData"


def named_files(data) -> list[str]:
    """The paths of Gradio file objects (``meta._type == "gradio.FileData"``) anywhere in ``data``."""
    found, stack = [], [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if _is_file_object(item):
                found.append(item["path"])
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return found


def owner_of_request(request) -> str:
    """The upload owner of a Gradio event: ``gr.Request.username`` is the resolved caller id."""
    if isinstance(request, list):
        request = request[0] if request else None
    return getattr(request, "username", None) or ANONYMOUS


def confine_event_files(blocks: gr.Blocks, registry: UploadRegistry) -> None:
    """Refuse every event whose inputs name a file this caller did not upload (see the module doc)."""
    original = blocks.process_api

    async def process_api(block_fn, inputs, state=None, request=None, *args, **kwargs):
        if not kwargs.get("explicit_call"):  # a call from server code, not from a client
            owner = owner_of_request(request)
            if any(not registry.owns(owner, path) for path in named_files(inputs)):
                raise gr.Error(REFUSED, print_exception=False)
        return await original(block_fn, inputs, state, request, *args, **kwargs)

    blocks.process_api = process_api


class UploadRecorder:
    """ASGI middleware: notes which caller each file from Gradio's upload route belongs to."""

    MAX_ANSWER = 1 << 20  # the upload route answers with a JSON list of paths

    def __init__(self, app, registry: UploadRegistry):
        self.app, self.registry = app, registry

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") != UPLOAD_PATH:
            return await self.app(scope, receive, send)
        # Uncompressed, so the list of paths can be read on its way out (Gradio would use Brotli).
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"accept-encoding"]
        status, body = [0], bytearray()

        async def recording_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body" and status[0] == 200 and len(body) < self.MAX_ANSWER:
                body.extend(message.get("body", b""))
                if not message.get("more_body"):
                    # Noted before the answer goes out: the caller may name the file right after.
                    self._note(scope, bytes(body))
            await send(message)

        await self.app(scope, receive, recording_send)

    def _note(self, scope, body: bytes) -> None:
        try:
            paths = json.loads(body)
        except ValueError:
            return
        if isinstance(paths, list):
            owner = caller_of(scope).id or ANONYMOUS
            self.registry.add(owner, [p for p in paths if isinstance(p, str)])
