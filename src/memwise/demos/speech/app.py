"""The speech server's HTTP and WebSocket API (Starlette), in front of a :class:`SpeechService`.

``POST /transcribe?task=ID&source=file|mic&mode=grammar|lm`` with a 16 kHz mono 16-bit WAV
body returns ``{"task", "text", "segments": [...], "audio_seconds"}``.

``/stream`` is a WebSocket on which a client streams files under task ids of its choosing:

- text frame ``{"type": "start", "task": ID, "sample_rate": 16000, "encoding": "pcm_s16le",
  "channels": 1, "source": "file"|"mic", "mode": "grammar"|"lm"}`` opens a task;
- binary frame ``ID`` + ``b"\\0"`` + PCM bytes adds audio to it (any length);
- text frame ``{"type": "end", "task": ID}`` closes it; ``{"type": "cancel", "task": ID}``
  drops it.

The server answers ``{"type": "partial", "task", "index", "start", "text"}`` for each
segment, in order per task (the partial texts joined are the final text), then
``{"type": "final", "task", "text", "segments"}``. Any bad message gets ``{"type": "error",
"task", "error", "message"}``, and the connection stays usable; a task whose file failed
gets the same with its id. A client that disconnects has its queued segments cancelled.

``GET /api/speech``: configuration, memory plan, tasks in progress. Beside these, the pool's
own dashboard (``/``), ``/metrics`` (Prometheus), ``/api/snapshot`` and ``/healthz`` from
:func:`memwise.server.create_app`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from memwise.demos.speech.audio import CHANNELS, SAMPLE_RATE, read_wav
from memwise.demos.speech.segments import SegmentResult, owned_words
from memwise.demos.speech.service import FileJob, SpeechService
from memwise.errors import InvalidAudio, MemwiseError, ProtocolError, TranscriptionFailed
from memwise.server import create_app
from memwise.server.broadcast import Broadcaster
from memwise.server.guard import LOOPBACK_HOSTS, Guard

MiB = 1024 * 1024
MAX_MESSAGE_BYTES = 1 * MiB  # one WebSocket frame: about 30 s of audio
MAX_BODY_BYTES = 40 * MiB  # one POSTed file: about 20 minutes of audio
MAX_TASKS_PER_CONNECTION = 16
MAX_TASK_ID = 128
_DISCONNECT_POLL_S = 0.25


def create_speech_app(service: SpeechService) -> Guard:
    """The API above, bound to a running service (which the caller owns and closes).

    ``.app.state.streams`` is the dashboard's event-stream broadcaster: whoever stops the
    server closes it first (:func:`close_streams`), or an open ``/api/events`` stream holds
    the shutdown until uvicorn's graceful timeout.

    Served on loopback only, and guarded as such: requests and WebSockets must name a loopback
    host (no DNS rebinding) and a WebSocket from a browser must come from a loopback page (no
    cross-site WebSocket hijacking).
    """

    async def transcribe(request: Request) -> JSONResponse:
        return await _transcribe(service, request)

    async def stream(websocket: WebSocket) -> None:
        await _Connection(service, websocket).run()

    async def status(_: Request) -> JSONResponse:
        return JSONResponse(
            {
                "workers": service.config.workers,
                "modes": list(service.config.recognizer.modes),
                "on_crash": service.config.on_crash,
                "memory": {**asdict(service.memory), "needed": service.memory.needed},
                "in_progress": service.in_progress(),
                "pool": service.pool.snapshot().to_dict(),
            }
        )

    # Everything else: the pool's dashboard (/), /metrics, /api/snapshot, /healthz.
    dashboard = create_app(service.pool)
    streams: Broadcaster = dashboard.state.broadcaster

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # Starlette does not run a mounted app's lifespan: its event streams end here.
        try:
            yield
        finally:
            streams.close()

    app = Starlette(
        routes=[
            Route("/transcribe", transcribe, methods=["POST"]),
            WebSocketRoute("/stream", stream),
            Route("/api/speech", status),
            Mount("/", app=dashboard),
        ],
        lifespan=lifespan,
    )
    app.state.streams = streams
    # The body limit here is a backstop: /transcribe answers its own 413 past MAX_BODY_BYTES.
    return Guard(app, token=None, allowed_hosts=LOOPBACK_HOSTS, max_body=2 * MAX_BODY_BYTES)


def close_streams(app: Guard) -> None:
    """End the dashboard's event streams of an app from :func:`create_speech_app` (any thread)."""
    app.app.state.streams.close()  # type: ignore[attr-defined]


def _error(exc: BaseException, task: str | None = None) -> dict[str, Any]:
    return {"type": "error", "task": task, "error": type(exc).__name__, "message": str(exc)}


async def _transcribe(service: SpeechService, request: Request) -> JSONResponse:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return _too_large()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return _too_large()
    params = request.query_params
    task_id = params.get("task") or uuid.uuid4().hex
    try:
        pcm = read_wav(bytes(body), max_seconds=service.config.max_file_seconds)
        job = service.open(task_id, params.get("source", "file"), params.get("mode"))  # type: ignore[arg-type]
    except InvalidAudio as exc:
        return JSONResponse(_error(exc, task_id), status_code=415)
    except ProtocolError as exc:
        duplicate = task_id in service.in_progress()
        return JSONResponse(_error(exc, task_id), status_code=409 if duplicate else 400)
    except TranscriptionFailed as exc:
        return JSONResponse(_error(exc, task_id), status_code=503)
    job.feed(pcm)
    job.finish()
    collecting = asyncio.ensure_future(_collect(job))
    while not collecting.done():
        await asyncio.wait({collecting}, timeout=_DISCONNECT_POLL_S)
        if not collecting.done() and await request.is_disconnected():
            collecting.cancel()
            job.cancel()  # nothing stays queued for a client that is gone
            return JSONResponse(_error(TranscriptionFailed("client disconnected"), task_id), 499)
    try:
        results = collecting.result()
    except TranscriptionFailed as exc:
        return JSONResponse(_error(exc, task_id), status_code=500)
    transcript = job.transcript(results)
    return JSONResponse(
        {
            "task": task_id,
            "text": transcript.text,
            "audio_seconds": transcript.audio_seconds,
            "segments": [_segment(r, service) for r in results],
        }
    )


def _control_message(text: str) -> dict[str, Any]:
    try:
        message = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"a text frame must be a JSON object: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a text frame must be a JSON object with a 'type'")
    return message


def _audio_frame(frame: bytes) -> tuple[str, bytes]:
    """A binary frame's task id and audio."""
    if len(frame) > MAX_MESSAGE_BYTES:
        raise InvalidAudio(
            f"a binary frame of {len(frame)} bytes exceeds {MAX_MESSAGE_BYTES} bytes: send "
            "the audio in smaller frames"
        )
    head, nul, _ = frame[: MAX_TASK_ID * 4 + 1].partition(b"\0")
    if not nul:
        raise ProtocolError("a binary frame must be the task id, a NUL byte, then 16-bit PCM")
    return head.decode("utf-8", errors="replace"), frame[len(head) + 1 :]


def _too_large() -> JSONResponse:
    exc = InvalidAudio(
        f"the request body exceeds {MAX_BODY_BYTES // MiB} MiB; split the file, or stream it "
        "over the WebSocket /stream"
    )
    return JSONResponse(_error(exc), status_code=413)


async def _collect(job: FileJob) -> list[SegmentResult]:
    return [result async for result in job.aresults()]


def _segment(result: SegmentResult, service: SpeechService) -> dict[str, Any]:
    text = " ".join(owned_words(result, service.config.overlap_seconds))
    return {"index": result.index, "start": result.start, "text": text}


class _Connection:
    """One WebSocket client and the tasks it has open."""

    def __init__(self, service: SpeechService, websocket: WebSocket) -> None:
        self.service = service
        self.websocket = websocket
        self.jobs: dict[str, FileJob] = {}
        self.senders: set[asyncio.Task[None]] = set()
        self.send_lock = asyncio.Lock()

    async def run(self) -> None:
        await self.websocket.accept()
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                task_id = None
                try:
                    if message.get("bytes") is not None:
                        task_id, pcm = _audio_frame(message["bytes"])
                        self._job(task_id).feed(pcm)
                    else:
                        request = _control_message(message.get("text") or "")
                        task_id = request.get("task")
                        await self._control(request)
                except MemwiseError as exc:
                    await self.send(_error(exc, task_id if isinstance(task_id, str) else None))
        finally:
            self._abandon()

    def _abandon(self) -> None:
        # The client is gone: its queued segments are cancelled (the one running finishes
        # and is discarded), so no worker time goes to a transcript nobody will read.
        for job in self.jobs.values():
            job.cancel()
        for sender in self.senders:
            sender.cancel()

    async def send(self, message: dict[str, Any]) -> None:
        async with self.send_lock:
            try:
                await self.websocket.send_text(json.dumps(message))
            except (WebSocketDisconnect, RuntimeError):
                # The client is gone; the receive loop sees it next and cancels its work.
                pass

    async def _control(self, message: dict[str, Any]) -> None:
        kind, task_id = message.get("type"), message.get("task")
        if kind == "start":
            self._start(task_id, message)
            await self.send({"type": "started", "task": task_id})
        elif kind == "end":
            self._job(task_id).finish()
        elif kind == "cancel":
            job = self._job(task_id)
            del self.jobs[job.task_id]
            await self.send({"type": "cancelled", "task": task_id, "dropped": job.cancel()})
        else:
            raise ProtocolError(f"unknown message type {kind!r}; send start, end or cancel")

    def _start(self, task_id: object, message: dict[str, Any]) -> None:
        if not isinstance(task_id, str) or not 0 < len(task_id) <= MAX_TASK_ID or "\0" in task_id:
            raise ProtocolError(f"task must be a non-empty string of at most {MAX_TASK_ID} chars")
        if len(self.jobs) >= MAX_TASKS_PER_CONNECTION:
            raise ProtocolError(
                f"at most {MAX_TASKS_PER_CONNECTION} tasks at once per connection; end one first"
            )
        rate = message.get("sample_rate", SAMPLE_RATE)
        encoding = message.get("encoding", "pcm_s16le")
        channels = message.get("channels", CHANNELS)
        if (rate, encoding, channels) != (SAMPLE_RATE, "pcm_s16le", CHANNELS):
            raise InvalidAudio(
                f"task {task_id!r}: audio must be {SAMPLE_RATE} Hz, pcm_s16le, {CHANNELS} channel;"
                f" got {rate} Hz, {encoding}, {channels} channel(s): resample it first"
            )
        job = self.service.open(task_id, message.get("source", "file"), message.get("mode"))
        self.jobs[task_id] = job
        sender = asyncio.ensure_future(self._send_results(job))
        self.senders.add(sender)
        sender.add_done_callback(self.senders.discard)

    def _job(self, task_id: object) -> FileJob:
        job = self.jobs.get(task_id) if isinstance(task_id, str) else None
        if job is None:
            raise ProtocolError(
                f"unknown task id {task_id!r} on this connection: send a start message first"
            )
        return job

    async def _send_results(self, job: FileJob) -> None:
        results = []
        try:
            async for result in job.aresults():
                results.append(result)
                await self.send(
                    {"type": "partial", "task": job.task_id, **_segment(result, self.service)}
                )
            if job.task_id in self.jobs:  # not cancelled by the client
                transcript = job.transcript(results)
                await self.send(
                    {
                        "type": "final",
                        "task": job.task_id,
                        "text": transcript.text,
                        "segments": len(results),
                    }
                )
        except TranscriptionFailed as exc:
            await self.send(_error(exc, job.task_id))
        finally:
            self.jobs.pop(job.task_id, None)
