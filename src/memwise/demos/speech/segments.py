"""Long audio cut into overlapping segments, and their transcripts merged back in order.

A recording is cut every ``length - overlap`` seconds into segments of ``length`` seconds, so
that neighbours share ``overlap`` seconds. Each segment is recognized on its own (a worker
needs no state from the previous one, which is what lets a lost segment simply run again).
Merging keeps, from each segment, the words whose middle falls in the part of the timeline
that segment *owns*: its span minus half the overlap on each inner side. A word shorter than
the overlap is therefore always taken from a segment that heard all of it, never twice, and
never cut in half at a segment boundary.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from memwise.demos.speech.audio import SAMPLE_RATE, SAMPLE_WIDTH

# The seed cuts 60 s segments with 4 s overlap; the shipped recordings last about 10 s, so
# segments are proportionally shorter, with an overlap that still holds the longest word.
SEGMENT_SECONDS = 4.0
OVERLAP_SECONDS = 1.0


@dataclass(frozen=True)
class Word:
    """A recognized word and where it is in its segment, in seconds from the segment's start."""

    text: str
    start: float
    end: float


@dataclass(frozen=True)
class Segment:
    """One piece of a file, as sent to a recognizer."""

    index: int  # 0, 1, 2 ... within its file
    start: float  # seconds from the start of the file
    pcm: bytes
    last: bool  # the file's final segment

    @property
    def seconds(self) -> float:
        return len(self.pcm) / (SAMPLE_RATE * SAMPLE_WIDTH)


@dataclass(frozen=True)
class SegmentResult:
    """A segment's words, as a recognizer returns them."""

    index: int
    start: float
    seconds: float
    last: bool
    words: tuple[Word, ...]
    busy: float  # seconds of recognizer time it took
    pid: int  # the worker process that recognized it

    @property
    def text(self) -> str:
        return " ".join(word.text for word in self.words)


class Segmenter:
    """Cuts a stream of PCM into overlapping segments as the audio arrives.

    ``feed`` returns the segments completed by the new audio; ``finish`` returns the last,
    possibly shorter one. Only the unsent tail (at most one segment) is held.
    """

    def __init__(self, length: float = SEGMENT_SECONDS, overlap: float = OVERLAP_SECONDS) -> None:
        if not 0 <= overlap < length:
            raise ValueError(f"overlap must be in [0, length), got {overlap} for {length}")
        self._length = _bytes(length)
        self._step = _bytes(length - overlap)
        self._buffer = bytearray()
        self._offset = 0  # bytes of the file before the buffer
        self._index = 0
        self.received = 0  # bytes fed in total

    def feed(self, pcm: bytes) -> list[Segment]:
        self.received += len(pcm)
        self._buffer += pcm
        ready = []
        # A full segment is sent only once audio past it exists: otherwise it might be the
        # last one, and the last one must say so.
        while len(self._buffer) > self._length:
            ready.append(self._cut(self._length, last=False))
            del self._buffer[: self._step]
            self._offset += self._step
        return ready

    def finish(self) -> list[Segment]:
        if not self._buffer and self._index:
            return []
        segment = self._cut(len(self._buffer), last=True)
        self._buffer.clear()
        return [segment]

    def _cut(self, size: int, *, last: bool) -> Segment:
        start = self._offset / (SAMPLE_RATE * SAMPLE_WIDTH)
        segment = Segment(self._index, start, bytes(self._buffer[:size]), last)
        self._index += 1
        return segment


def split(
    pcm: bytes, length: float = SEGMENT_SECONDS, overlap: float = OVERLAP_SECONDS
) -> list[Segment]:
    """A whole recording's segments."""
    segmenter = Segmenter(length, overlap)
    return segmenter.feed(pcm) + segmenter.finish()


def owned_words(result: SegmentResult, overlap: float = OVERLAP_SECONDS) -> list[str]:
    """The words of one segment that belong to it in the merged transcript (see the module
    docstring): its first segment owns from 0, its last to the end."""
    low = 0.0 if result.index == 0 else overlap / 2
    high = float("inf") if result.last else result.seconds - overlap / 2
    return [w.text for w in result.words if low <= (w.start + w.end) / 2 < high]


def merge(results: Iterable[SegmentResult], overlap: float = OVERLAP_SECONDS) -> str:
    """The transcript of a file from its segments' results, given in order."""
    return " ".join(word for result in results for word in owned_words(result, overlap))


def _bytes(seconds: float) -> int:
    return round(seconds * SAMPLE_RATE) * SAMPLE_WIDTH
