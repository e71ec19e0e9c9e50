"""The recognizer each worker holds: pocketsphinx with its bundled US English model.

``load`` is the pool's initializer: it builds one decoder per worker process, once, before
the first task (about 25 MB private memory in grammar mode, 90 MB with the language model).
``recognize`` then runs in that worker on one segment at a time. Two modes:

- ``"grammar"``: a JSGF grammar of spoken digits. A closed vocabulary makes the result
  deterministic enough to check with a word error rate bound.
- ``"lm"``: the general English language model shipped with pocketsphinx (open vocabulary,
  several times slower, and far less accurate on synthetic speech).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from memwise.demos.speech.audio import DIGITS, SAMPLE_RATE, SAMPLE_WIDTH
from memwise.demos.speech.segments import Segment, SegmentResult, Word

Mode = Literal["grammar", "lm"]
MODES: tuple[Mode, ...] = ("grammar", "lm")

DIGIT_GRAMMAR = f"""#JSGF V1.0;
grammar digits;
public <digits> = ( {" | ".join(DIGITS)} )+ ;
"""
# pocketsphinx's frames are 10 ms.
_FRAMES_PER_SECOND = 100
# Markers of silence, sentence start/end and noise, which are not words of the transcript.
_NOT_WORDS = ("<s>", "</s>", "<sil>")

_PAD = bytes(SAMPLE_WIDTH * SAMPLE_RATE * 3 // 10)  # 0.3 s of silence

_decoder: Any = None


@dataclass(frozen=True)
class RecognizerConfig:
    """How every worker's recognizer is built."""

    # The searches each worker loads; a file picks one of them. The language model adds
    # about 65 MB per worker and a second or two of start-up.
    modes: tuple[Mode, ...] = ("grammar",)
    grammar: str = DIGIT_GRAMMAR
    # A different model directory (the default is the one inside the pocketsphinx wheel); a
    # wrong one stops start-up with the reason, before any audio is accepted.
    model_dir: str | None = None


def load(config: RecognizerConfig, ready_dir: str | None = None) -> None:
    """Worker initializer: build this worker's decoder; then mark it ready in ``ready_dir``.

    ``ready_dir`` is how the start-up progress line counts ready recognizers before the pool
    has finished starting (one empty file per ready worker).
    """
    global _decoder
    from pocketsphinx import Decoder, get_model_path

    unknown = set(config.modes) - set(MODES)
    if unknown or not config.modes:
        raise ValueError(f"recognizer modes must be among {MODES}, got {config.modes!r}")
    model = Path(config.model_dir or get_model_path())
    if not (model / "en-us" / "en-us").is_dir():
        raise FileNotFoundError(f"no acoustic model under {model} (expected {model}/en-us/en-us/)")
    decoder = Decoder(
        hmm=str(model / "en-us" / "en-us"),
        dict=str(model / "en-us" / "cmudict-en-us.dict"),
        lm=None,  # loaded below as a named search, only when asked for
        loglevel="ERROR",
    )
    if "grammar" in config.modes:
        decoder.add_jsgf_string("grammar", config.grammar)
    if "lm" in config.modes:
        decoder.add_lm_file("lm", str(model / "en-us" / "en-us.lm.bin"))
    decoder.activate_search(config.modes[0])
    _decoder = decoder
    if ready_dir is not None:
        try:
            Path(ready_dir, str(os.getpid())).touch()
        except OSError:
            pass  # start-up is over and the directory gone: this is a replacement worker


def recognize(segment: Segment, mode: Mode = "grammar") -> SegmentResult:
    """The words of one segment, with their times (runs in a worker, after ``load``)."""
    if _decoder is None:
        raise RuntimeError("recognize() runs in a worker whose initializer is recognizer.load")
    started = time.perf_counter()
    if _decoder.current_search() != mode:
        _decoder.activate_search(mode)  # raises if this worker did not load that mode
    _decoder.start_utt()
    # Trailing silence: a segment cut in the middle of a word otherwise leaves the grammar
    # search without a final state, and it returns nothing at all for the segment.
    _decoder.process_raw(segment.pcm + _PAD, full_utt=True)
    _decoder.end_utt()
    words = tuple(
        Word(
            _base_word(seg.word),
            seg.start_frame / _FRAMES_PER_SECOND,
            (seg.end_frame + 1) / _FRAMES_PER_SECOND,
        )
        for seg in (_decoder.seg() if _decoder.hyp() is not None else ())
        if seg.word not in _NOT_WORDS and not seg.word.startswith("[")
    )
    return SegmentResult(
        index=segment.index,
        start=segment.start,
        seconds=segment.seconds,
        last=segment.last,
        words=words,
        busy=time.perf_counter() - started,
        pid=os.getpid(),
    )


def _base_word(word: str) -> str:
    # Alternative pronunciations come back as "word(2)".
    return word.split("(", 1)[0]
