"""Many files through a service at once, measured: what the scenario and the benchmark run.

Figures: wall time, recognizer time and audio per worker (real-time factor = busy seconds
per second of audio), and the peak memory of the service sampled every 50 ms as private
memory (RssAnon) and PSS of this process and each worker, never summed RSS. Optionally one
worker is SIGKILLed in the middle of recognizing one file's segment.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from memwise.demos.speech.audio import Clip
from memwise.demos.speech.service import FileJob, SpeechService, Transcript
from memwise.errors import TranscriptionFailed
from memwise.memory import usage

SAMPLE_S = 0.05
WAIT_S = 600.0


@dataclass
class BatchRun:
    """What one batch did."""

    seconds: float
    audio_seconds: float
    transcripts: dict[str, Transcript]
    failures: dict[str, str]
    killed_pid: int | None = None
    killed_file: str | None = None
    busy: dict[int, float] = field(default_factory=dict)  # recognizer seconds per worker pid
    audio: dict[int, float] = field(default_factory=dict)  # audio seconds per worker pid
    peak_private: int = 0  # this process + workers, at the worst sample
    peak_workers_private: int = 0
    peak_pss: int = 0

    @property
    def rtf(self) -> dict[int, float]:
        """Real-time factor per worker: seconds of recognition per second of audio."""
        return {pid: self.busy[pid] / self.audio[pid] for pid in self.busy if self.audio[pid]}


def transcribe_all(
    service: SpeechService, clips: list[Clip], *, kill: str | None = None, prefix: str = ""
) -> BatchRun:
    """Submit every clip as its own file at once, then collect the transcripts. With
    ``kill=name``, that file's worker is killed mid-segment once the file is under way."""
    sampler = _MemorySampler(service)
    sampler.start()
    started = time.perf_counter()
    jobs: dict[str, FileJob] = {}
    for clip in clips:
        job = jobs[clip.name] = service.open(prefix + clip.name)
        job.feed(clip.pcm)
        job.finish()
    killer = _Killer(service, jobs[kill]) if kill is not None else None
    run = BatchRun(0.0, sum(c.seconds for c in clips), {}, {}, killed_file=kill)
    busy: dict[int, float] = defaultdict(float)
    audio: dict[int, float] = defaultdict(float)
    try:
        for name, job in jobs.items():
            try:
                results = list(job.results(WAIT_S))
            except TranscriptionFailed as exc:
                run.failures[name] = str(exc)
                continue
            run.transcripts[name] = job.transcript(results)
            for result in results:
                busy[result.pid] += result.busy
                audio[result.pid] += result.seconds
        run.seconds = time.perf_counter() - started
    finally:
        if killer is not None:
            run.killed_pid = killer.stop()
        sampler.stop()
    run.busy, run.audio = dict(busy), dict(audio)
    run.peak_private, run.peak_workers_private, run.peak_pss = sampler.peaks()
    return run


def kill_mid_file(service: SpeechService, job: FileJob, stop: threading.Event) -> int | None:
    """SIGKILL the worker of ``job`` while it is inside a recognition of one of its segments
    after the first (its CPU time grows while it holds the file); returns its pid."""
    import psutil

    while not stop.is_set():
        pid = service.lane_pid(job.task_id)
        if pid is not None and job.futures[0].done():
            try:
                process = psutil.Process(pid)
                used = sum(process.cpu_times()[:2])
                stop.wait(0.05)
                if sum(process.cpu_times()[:2]) > used and service.lane_pid(job.task_id) == pid:
                    os.kill(pid, signal.SIGKILL)
                    return pid
            except (psutil.NoSuchProcess, ProcessLookupError):
                pass
        stop.wait(0.01)
    return None


class _Killer:
    def __init__(self, service: SpeechService, job: FileJob) -> None:
        self._stop = threading.Event()
        self._pid: list[int | None] = []
        self._thread = threading.Thread(
            target=lambda: self._pid.append(kill_mid_file(service, job, self._stop)),
            name="speech-killer",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> int | None:
        self._stop.set()
        self._thread.join()
        return self._pid[0] if self._pid else None


class _MemorySampler:
    def __init__(self, service: SpeechService) -> None:
        self._service = service
        self._samples: list[tuple[int, int, int]] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="speech-memory", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def peaks(self) -> tuple[int, int, int]:
        self._sample()  # at least one sample, even for a run shorter than the period
        return tuple(max(s[i] for s in self._samples) for i in range(3))  # type: ignore[return-value]

    def _loop(self) -> None:
        while not self._stopped.wait(SAMPLE_S):
            self._sample()

    def _sample(self) -> None:
        me = usage()
        private, pss = me.private, me.pss or 0
        workers = 0
        for worker in self._service.pool.snapshot().workers:
            if worker.pid is None:
                continue
            try:
                measured = usage(worker.pid)
            except (ProcessLookupError, PermissionError):
                continue  # exited between the snapshot and the reading
            workers += measured.private
            pss += measured.pss or 0
        self._samples.append((private + workers, workers, pss))
