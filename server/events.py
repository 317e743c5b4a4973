"""Gradio's event table, answering an unknown event with a 404 instead of a 500.

Gradio finds the function of ``queue/join``, ``run/predict`` and ``/api/<name>`` with
``fns[body.fn_index]``, or by name for ``/api/<name>``: an index no event has was a ``KeyError``, an HTTP 500 and a traceback in
the server log for every such request (a cheap way to flood a hosted app's log). The table is
swapped for a dict whose missing keys raise a 404 that still is a ``KeyError`` (so code that
catches one behaves as before). Sessions copy the table with ``copy.copy``, which keeps its class.
An unknown name (Gradio's ``FnIndexInferError``) gets the same 404 from an exception handler.
"""

from __future__ import annotations

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from gradio.route_utils import FnIndexInferError


class UnknownEvent(KeyError, HTTPException):
    """No event has this index: HTTP 404."""

    def __init__(self) -> None:
        HTTPException.__init__(self, status_code=404, detail="No such event: reload the page.")

    def __str__(self) -> str:
        return self.detail


class EventTable(dict):
    """``blocks.fns`` with a 404 for a missing index."""

    def __missing__(self, key):
        raise UnknownEvent()


def answer_unknown_events(blocks) -> None:
    """Install :class:`EventTable` as ``blocks``' event table (after every event is wired)."""
    config = blocks.default_config
    if not isinstance(config.fns, EventTable):
        config.fns = EventTable(config.fns)


async def unknown_event_name(request: Request, exc: FnIndexInferError) -> JSONResponse:
    """Exception handler: ``/api/<name>`` with a name no event has."""
    return JSONResponse({"detail": "No such event (API name)."}, status_code=404)


def install(blocks, gradio_app) -> None:
    """Both: the event table of ``blocks`` and the handler on its mounted ``gradio_app``."""
    answer_unknown_events(blocks)
    gradio_app.add_exception_handler(FnIndexInferError, unknown_event_name)
