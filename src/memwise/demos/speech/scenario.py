"""``memwise demo speech``: the offline speech recognition server, with real recognizers.

What it shows, on audio shipped in the package and with no network beyond the loopback:
recognizers loaded once per worker with a start-up progress line and a measured memory
check; the server on 127.0.0.1 taking files over its WebSocket (ordered partial transcripts,
one microphone stream at high priority) and over HTTP POST; one worker killed in the middle
of a file, which re-runs from the lost segment while the other files go on; the digit
grammar's word error rate against the spoken texts (the pass bar) and the language-model
mode on open-vocabulary sentences (reported, not a bar: synthetic speech is hard for it).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import httpx
from rich.console import Console
from websockets.sync.client import connect

from memwise.demos import Scenario
from memwise.demos.speech import audio
from memwise.demos.speech.accuracy import corpus_error_rate
from memwise.demos.speech.batch import kill_mid_file
from memwise.demos.speech.recognizer import RecognizerConfig
from memwise.demos.speech.serve import serving
from memwise.demos.speech.service import ServiceConfig, SpeechService
from memwise.memory import format_size

MAX_WER = 0.10  # digit grammar on the shipped set: measured around 3 %
FRAME_BYTES = 16_000  # half a second of audio per WebSocket frame
WAIT_S = 300.0


@dataclass
class Streamed:
    """What one WebSocket file received."""

    partials: list[str] = field(default_factory=list)
    final: str | None = None
    error: str | None = None


def run(*, short: bool, console: Console) -> Scenario:
    digits = audio.shipped("digits")[: 3 if short else None]
    sentences = audio.shipped("sentence")[: 1 if short else None]
    config = ServiceConfig(workers=2, recognizer=RecognizerConfig(modes=("grammar", "lm")))
    started = time.perf_counter()
    service = SpeechService(
        config, progress=lambda ready, total: console.print(f"{ready}/{total} recognizers ready")
    )
    try:
        console.print(f"memory check: {service.memory.describe()}: fits")
        with serving(service) as url:
            console.print(f"serving on {url} (WebSocket /stream, POST /transcribe, dashboard /)")
            streamed, killed = _stream_files(service, url, digits, console)
            posted = _post(url, sentences, mode="lm")
        seconds = time.perf_counter() - started
    finally:
        service.close()
    pairs = [(c.text, streamed[c.name].final or "") for c in digits]
    wer = corpus_error_rate(pairs)
    lm_wer = corpus_error_rate([(c.text, posted[c.name]) for c in sentences])
    complete = sum(1 for c in digits if streamed[c.name].final is not None)
    for clip in digits:
        got = streamed[clip.name]
        console.print(f"[dim]{clip.name}[/]: {got.final if got.error is None else got.error}")
    for clip in sentences:
        console.print(
            f"[dim]{clip.name} (language model)[/]: said {clip.text!r}, heard {posted[clip.name]!r}"
        )
    passed = complete == len(digits) and wer <= MAX_WER and killed is not None
    console.print(
        f"{complete}/{len(digits)} files over the WebSocket, worker {killed} killed mid-file; "
        f"grammar WER {wer:.1%} (bar {MAX_WER:.0%}); language-model WER {lm_wer:.0%}; "
        f"{format_size(service.memory.per_worker)} per recognizer; {seconds:.1f} s"
    )
    return Scenario(
        name="speech",
        checked=f"{complete}/{len(digits)} files, WER {wer:.1%} <= {MAX_WER:.0%}, one kill",
        passed=passed,
        figure=f"{seconds:.1f} s, 2 recognizers",
        details={"wer": wer, "lm_wer": lm_wer, "killed_pid": killed},
    )


def _stream_files(
    service: SpeechService, url: str, clips: list[audio.Clip], console: Console
) -> tuple[dict[str, Streamed], int | None]:
    """Every clip as a task on one WebSocket (the first as a microphone stream), with the
    worker of the second killed while it recognizes one of its segments."""
    streamed = {clip.name: Streamed() for clip in clips}
    stop = threading.Event()
    killed: list[int | None] = []
    with connect(url.replace("http://", "ws://") + "/stream", open_timeout=WAIT_S) as ws:
        for i, clip in enumerate(clips):
            source = "mic" if i == 0 else "file"
            ws.send(json.dumps({"type": "start", "task": clip.name, "source": source}))
            reply = json.loads(ws.recv(WAIT_S))
            if reply["type"] != "started":
                raise RuntimeError(f"the server refused {clip.name}: {reply}")
        victim = service.job(clips[1].name)
        killer = threading.Thread(
            target=lambda: killed.append(kill_mid_file(service, victim, stop)), daemon=True
        )
        killer.start()
        for start in range(0, max(len(c.pcm) for c in clips), FRAME_BYTES):
            for clip in clips:
                if start < len(clip.pcm):
                    ws.send(clip.name.encode() + b"\0" + clip.pcm[start : start + FRAME_BYTES])
        for clip in clips:
            ws.send(json.dumps({"type": "end", "task": clip.name}))
        try:
            while any(s.final is None and s.error is None for s in streamed.values()):
                message = json.loads(ws.recv(WAIT_S))
                got = streamed.get(message.get("task"))
                if got is None:
                    continue
                if message["type"] == "partial":
                    got.partials.append(message["text"])
                elif message["type"] == "final":
                    got.final = message["text"]
                elif message["type"] == "error":
                    got.error = message["message"]
        finally:
            stop.set()
            killer.join()
    if killed and killed[0] is not None:
        console.print(f"[yellow]killed worker {killed[0]} mid-file; its segment re-ran")
    return streamed, killed[0] if killed else None


def _post(url: str, clips: list[audio.Clip], mode: str) -> dict[str, str]:
    texts = {}
    for clip in clips:
        response = httpx.post(
            f"{url}/transcribe",
            params={"task": clip.name, "mode": mode},
            content=audio.wav_bytes(clip.pcm),
            timeout=WAIT_S,
        )
        response.raise_for_status()
        texts[clip.name] = response.json()["text"]
    return texts
