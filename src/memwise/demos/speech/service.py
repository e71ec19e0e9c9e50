"""The recognition service: N recognizer workers behind sticky, ordered, per-file dispatch.

Every segment of one file is submitted with ``key=task id``: the pool pins a key to one
worker lane by rendezvous hashing of a stable digest (never Python's salted ``hash()``) and
runs one key's tasks in submission order, so a file's segments are recognized in order while
other files run on the other workers. Microphone audio is submitted at a higher priority than
batch files.

Start-up: a probe worker loads one recognizer (a recognizer that cannot load stops start-up
here, with its reason) and measures its memory for the configuration check; then the N
workers start, each loading its recognizer once in the pool's initializer, with a progress
line ("2/4 recognizers ready"); a worker that fails to load fails the start (fail-fast).

A worker killed mid-file is replaced by the pool. What happens to that file is configured by
``on_crash``:

- ``"rerun"`` (the default): the lost segment runs again on the replacement, and the rest of
  the file follows in order. Segments are independent utterances, so re-running one is exact
  and costs at most one segment's work; the client still gets its whole transcript. A segment
  that kills its worker twice fails its file (a poison input cannot loop).
- ``"fail"``: the file fails at once with ``TranscriptionFailed``; its queued segments are
  cancelled. For inputs suspected of crashing the recognizer.

Either way no other file is affected: their segments are queued under their own keys.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from memwise.demos.speech import memcheck, recognizer
from memwise.demos.speech.audio import SAMPLE_RATE, SAMPLE_WIDTH, seconds_of
from memwise.demos.speech.recognizer import RecognizerConfig
from memwise.demos.speech.segments import (
    OVERLAP_SECONDS,
    SEGMENT_SECONDS,
    Segment,
    Segmenter,
    SegmentResult,
    merge,
)
from memwise.errors import InvalidAudio, ProtocolError, TranscriptionFailed, WorkerCrashed
from memwise.memory import parse_size, system
from memwise.pool.api import WorkerPool
from memwise.pool.queue import lane_for
from memwise.pool.stats import key_repr

OnCrash = Literal["rerun", "fail"]
Source = Literal["mic", "file"]
PRIORITY: dict[Source, int] = {"mic": 10, "file": 0}


@dataclass(frozen=True)
class ServiceConfig:
    """How the service runs. Sizes may be given as ``"256 MiB"``."""

    workers: int = 2
    recognizer: RecognizerConfig = field(default_factory=RecognizerConfig)
    on_crash: OnCrash = "rerun"
    segment_seconds: float = SEGMENT_SECONDS
    overlap_seconds: float = OVERLAP_SECONDS
    memory_check: memcheck.OnShort = "refuse"
    memory_limit: int | str | None = None  # a cap lower than the machine's available memory
    headroom: int | str = "256 MiB"  # for the server process itself, over the recognizers
    max_file_seconds: float = 600.0
    init_timeout: float = 120.0


@dataclass(frozen=True)
class Transcript:
    """A finished file."""

    task_id: str
    text: str
    segments: tuple[SegmentResult, ...]

    @property
    def audio_seconds(self) -> float:
        last = self.segments[-1]
        return last.start + last.seconds


class FileJob:
    """One file being transcribed: audio goes in with ``feed``/``finish``, ordered segment
    results come out of ``results``/``aresults``. Not thread-safe: one producer."""

    def __init__(
        self, service: SpeechService, task_id: str, source: Source, mode: recognizer.Mode
    ) -> None:
        self.task_id = task_id
        self.source = source
        self.mode = mode
        self._service = service
        self._segmenter = Segmenter(service.config.segment_seconds, service.config.overlap_seconds)
        self.key, self.lane = service.assign(task_id)
        self._submitter = service.pool.options(key=self.key, priority=PRIORITY[source])
        self.futures: list[Future[SegmentResult]] = []
        self.finished = False
        self._changed: asyncio.Event | None = None

    @property
    def received_seconds(self) -> float:
        return self._segmenter.received / (SAMPLE_RATE * SAMPLE_WIDTH)

    def feed(self, pcm: bytes) -> None:
        """Add audio (16 kHz mono s16le); complete segments are queued at once."""
        if self.finished:
            raise ProtocolError(f"task {self.task_id!r} has ended; start a new task for more audio")
        if len(pcm) % SAMPLE_WIDTH:
            raise InvalidAudio(
                f"{len(pcm)} bytes is not a whole number of 16-bit samples; send s16le PCM"
            )
        limit = self._service.config.max_file_seconds
        if self.received_seconds + seconds_of(pcm) > limit:
            raise InvalidAudio(
                f"task {self.task_id!r} would exceed {limit:.0f} s of audio, the most one file "
                "may have; split it into several tasks"
            )
        self._submit(self._segmenter.feed(pcm))

    def finish(self) -> None:
        """No more audio: queue the last segment."""
        if self.finished:
            raise ProtocolError(f"task {self.task_id!r} has already ended")
        self._submit(self._segmenter.finish())
        self.finished = True
        self._notify()

    def cancel(self) -> int:
        """Drop the segments not started yet (the client is gone); returns how many."""
        self.finished = True
        dropped = sum(1 for future in self.futures if future.cancel())
        self._notify()
        self._service.forget(self)
        return dropped

    def results(self, timeout: float | None = None) -> Iterator[SegmentResult]:
        """The segment results in order, after ``finish`` (blocking)."""
        for future in self.futures:
            yield self._outcome(future, timeout)

    async def aresults(self) -> AsyncIterator[SegmentResult]:
        """The segment results in order, as they complete, until the file is finished."""
        self._changed = asyncio.Event()
        index = 0
        while True:
            if index < len(self.futures):
                future = self.futures[index]
                await asyncio.wait([asyncio.wrap_future(future)])
                if future.cancelled():
                    return  # the job was cancelled on purpose: nothing more to report
                yield self._outcome(future, 0)
                index += 1
            elif self.finished:
                return
            else:
                self._changed.clear()
                await self._changed.wait()

    def transcript(self, results: list[SegmentResult]) -> Transcript:
        return Transcript(
            self.task_id, merge(results, self._service.config.overlap_seconds), tuple(results)
        )

    def _submit(self, segments: list[Segment]) -> None:
        for segment in segments:
            future = self._submitter.submit(recognizer.recognize, segment, self.mode)
            self._service.load(self.lane, len(segment.pcm), future)
            self.futures.append(future)
        if segments:
            self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def _outcome(self, future: Future[SegmentResult], timeout: float | None) -> SegmentResult:
        try:
            if future.cancelled():
                raise TranscriptionFailed(f"task {self.task_id!r} was cancelled")
            return future.result(timeout)
        except TranscriptionFailed:
            raise
        except WorkerCrashed as exc:
            self.cancel()
            policy = self._service.config.on_crash
            raise TranscriptionFailed(
                f"task {self.task_id!r} failed: {exc} (on_crash={policy!r}; other files are "
                "unaffected; send the file again)"
            ) from exc
        except Exception as exc:
            self.cancel()
            raise TranscriptionFailed(
                f"task {self.task_id!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            if self.finished and all(f.done() for f in self.futures):
                self._service.forget(self)


class SpeechService:
    """N recognizers in a supervised pool; see the module docstring.

    ``progress(ready, total)`` is called during start-up as recognizers become ready.
    """

    def __init__(
        self,
        config: ServiceConfig | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.config = config = config or ServiceConfig()
        self.memory = self._check_memory(config)
        self.started_in = 0.0
        self._jobs: dict[str, FileJob] = {}
        self._lock = threading.RLock()  # open() assigns a lane while holding it
        self._load: dict[int, int] = {}  # bytes of audio queued or running, per lane (exact)
        self.closing = False
        started = time.perf_counter()
        ready_dir = tempfile.mkdtemp(prefix="memwise-speech-")
        watcher = _ReadyWatcher(Path(ready_dir), config.workers, progress)
        try:
            watcher.start()
            self.pool = WorkerPool(
                config.workers,
                initializer=recognizer.load,
                initargs=(config.recognizer, ready_dir),
                init_timeout=config.init_timeout,
                retries=1 if config.on_crash == "rerun" else 0,
            )
        finally:
            watcher.stop()
            shutil.rmtree(ready_dir, ignore_errors=True)
        self.started_in = time.perf_counter() - started

    @staticmethod
    def _check_memory(config: ServiceConfig) -> memcheck.MemoryPlan:
        # The probe loads one recognizer first: a model that cannot load fails here, before N
        # processes start; and its memory, measured after one recognition, sizes the plan.
        with WorkerPool(
            1,
            initializer=recognizer.load,
            initargs=(config.recognizer,),
            init_timeout=config.init_timeout,
        ) as probe:
            probe.submit(recognizer.recognize, Segment(0, 0.0, bytes(SAMPLE_RATE), True)).result()
            per_worker = probe.snapshot().workers[0].private or 0
        available = system().available
        if config.memory_limit is not None:
            available = min(available, parse_size(config.memory_limit))
        plan = memcheck.MemoryPlan(
            config.workers, per_worker, parse_size(config.headroom), available
        )
        memcheck.check(plan, config.memory_check)
        return plan

    def open(
        self, task_id: str, source: Source = "file", mode: recognizer.Mode | None = None
    ) -> FileJob:
        """Start a file under ``task_id`` (unique among the files in progress), recognized
        in ``mode`` (by default the first mode the recognizers load)."""
        if self.closing:
            raise TranscriptionFailed("the server is shutting down; send the file to another one")
        if source not in PRIORITY:
            raise ProtocolError(f"source must be one of {list(PRIORITY)}, got {source!r}")
        modes = self.config.recognizer.modes
        mode = modes[0] if mode is None else mode
        if mode not in modes:
            raise ProtocolError(f"mode must be one of {list(modes)} on this server, got {mode!r}")
        with self._lock:
            if task_id in self._jobs:
                raise ProtocolError(f"task id {task_id!r} is already in progress; use a new id")
            job = self._jobs[task_id] = FileJob(self, task_id, source, mode)
        return job

    def job(self, task_id: str) -> FileJob:
        """The file in progress under ``task_id``; ``ProtocolError`` if there is none."""
        try:
            return self._jobs[task_id]
        except KeyError:
            raise ProtocolError(
                f"unknown task id {task_id!r}: send a start message for it first"
            ) from None

    def assign(self, task_id: str) -> tuple[str, int]:
        """The pool key of a new file, and its lane: the lane with the least audio queued
        (then the fewest files open).

        Hashing the task id alone (as the pool does with any key) leaves lanes unevenly
        loaded when few files run at once: 8 files on 2 lanes often split 5/3, which caps
        the speed-up at 1.6x. So a file gets a key derived from its id (``id#n``) whose
        rendezvous hash lands on the least-loaded lane; it keeps that key, hence that worker
        and its order, for its whole life.
        """
        lanes = self.pool.workers
        with self._lock:
            files = Counter(job.lane for job in self._jobs.values())
            # Files still streaming have little audio queued yet: their count breaks ties.
            lane = min(range(lanes), key=lambda n: (self._load.get(n, 0), files[n], n))
        for n in range(64 * lanes):  # each try lands on the lane with probability 1/lanes
            key = f"{task_id}#{n}"
            if lane_for(key, lanes) == lane:
                return key, lane
        return task_id, lane_for(task_id, lanes)

    def load(self, lane: int, size: int, future: Future[SegmentResult]) -> None:
        """Count ``size`` bytes of audio on ``lane`` until ``future`` is done."""
        with self._lock:
            self._load[lane] = self._load.get(lane, 0) + size

        def unload(_: Future[SegmentResult]) -> None:
            with self._lock:
                self._load[lane] -= size

        future.add_done_callback(unload)

    def forget(self, job: FileJob) -> None:
        with self._lock:
            if self._jobs.get(job.task_id) is job:
                del self._jobs[job.task_id]

    def transcribe(
        self,
        task_id: str,
        pcm: bytes,
        source: Source = "file",
        mode: recognizer.Mode | None = None,
    ) -> Transcript:
        """A whole file, blocking until its transcript is ready."""
        job = self.open(task_id, source, mode)
        try:
            job.feed(pcm)
            job.finish()
        except BaseException:
            job.cancel()
            raise
        return job.transcript(list(job.results()))

    def resize(self, workers: int, *, check: bool = True) -> None:
        """Change the number of recognizers while serving. Growing is checked against the
        available memory like the start-up configuration (``check=False`` skips that). Files
        in progress keep their worker and their order: a key only moves while it has no
        segment queued or running, and about ``1/workers`` of the keys move at all."""
        if check and workers > self.pool.workers:
            plan = memcheck.MemoryPlan(
                workers - self.pool.workers,
                self.memory.per_worker,
                parse_size(self.config.headroom),
                system().available,
            )
            memcheck.check(plan, self.config.memory_check)
        self.pool.resize(workers)

    def lane_pid(self, task_id: str) -> int | None:
        """The pid of the worker busy with ``task_id`` now, if any."""
        job = self._jobs.get(task_id)
        if job is None:
            return None
        key = key_repr(job.key)
        for worker in self.pool.snapshot().workers:
            if worker.state == "busy" and worker.task is not None and worker.task.key == key:
                return worker.pid
        return None

    def in_progress(self) -> list[str]:
        with self._lock:
            return list(self._jobs)

    def close(self, deadline: float = 30.0) -> list[str]:
        """Graceful shutdown: refuse new files, let those in progress finish for up to
        ``deadline`` seconds, then cancel what is left; returns the task ids cut short."""
        self.closing = True
        end = time.monotonic() + deadline
        cut = []
        for task_id in self.in_progress():
            job = self._jobs.get(task_id)
            if job is None:
                continue
            for future in list(job.futures):
                try:
                    future.exception(max(0.0, end - time.monotonic()))
                except Exception:  # a timeout or cancellation: cut below
                    break
            if not (job.finished and all(f.done() for f in job.futures)):
                cut.append(task_id)
                job.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)
        return cut

    def __enter__(self) -> SpeechService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ReadyWatcher:
    """Reports ``ready/total`` while the pool starts (each ready worker leaves a file)."""

    def __init__(
        self, directory: Path, total: int, progress: Callable[[int, int], None] | None
    ) -> None:
        self._directory = directory
        self._total = total
        self._progress = progress
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="speech-ready", daemon=True)
        self._reported = -1

    def start(self) -> None:
        if self._progress is not None:
            self._thread.start()

    def stop(self) -> None:
        if self._progress is None:
            return
        self._stopped.set()
        self._thread.join()
        self._report()

    def _loop(self) -> None:
        while not self._stopped.wait(0.05):
            self._report()

    def _report(self) -> None:
        try:
            ready = min(self._total, len(list(self._directory.iterdir())))
        except OSError:
            return
        if ready != self._reported and self._progress is not None:
            self._reported = ready
            self._progress(ready, self._total)
