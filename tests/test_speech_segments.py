"""Speech scenario, the parts without a recognizer: segmenting, merging, WER, memory plan, WAV."""

from __future__ import annotations

import logging

import jiwer
import pytest

from memwise.demos.speech import audio, memcheck
from memwise.demos.speech.accuracy import corpus_error_rate, word_error_rate
from memwise.demos.speech.segments import Segmenter, SegmentResult, Word, merge, split
from memwise.errors import InsufficientMemory, InvalidAudio


def pcm(seconds: float) -> bytes:
    return bytes(int(seconds * audio.SAMPLE_RATE) * audio.SAMPLE_WIDTH)


def test_split_overlaps_and_marks_the_last_segment():
    segments = split(pcm(10.5), length=4.0, overlap=1.0)
    assert [s.start for s in segments] == [0.0, 3.0, 6.0, 9.0]
    assert [s.seconds for s in segments] == [4.0, 4.0, 4.0, 1.5]
    assert [s.last for s in segments] == [False, False, False, True]
    assert [s.index for s in segments] == [0, 1, 2, 3]
    # Audio that ends exactly with a segment needs no extra one of pure overlap.
    assert [s.last for s in split(pcm(10.0), length=4.0, overlap=1.0)] == [False, False, True]


def test_streamed_audio_gives_the_same_segments_as_a_whole_file():
    whole = bytes(range(256)) * 625  # 10 s, not all zero, so contents are compared too
    segmenter = Segmenter(4.0, 1.0)
    streamed = []
    for i in range(0, len(whole), 3202):  # frames that do not line up with segments
        streamed += segmenter.feed(whole[i : i + 3202])
    streamed += segmenter.finish()
    assert streamed == split(whole, 4.0, 1.0)


def test_empty_audio_is_one_empty_last_segment():
    (segment,) = split(b"")
    assert segment.last and segment.seconds == 0


def result(index, start, seconds, last, words):
    return SegmentResult(index, start, seconds, last, tuple(Word(*w) for w in words), 0.0, 0)


def test_merge_takes_each_overlapped_word_once_from_the_segment_that_heard_it_whole():
    # Segments of 4 s every 3 s; "two" spans 3.3-3.9 s of the file: in both segments.
    first = result(0, 0.0, 4.0, False, [("one", 1.0, 1.5), ("two", 3.3, 3.9)])
    second = result(1, 3.0, 4.0, True, [("two", 0.3, 0.9), ("three", 2.0, 2.4)])
    assert merge([first, second], overlap=1.0) == "one two three"
    # A word cut by the end of the first segment (3.8-4.0) is taken from the second.
    cut = result(0, 0.0, 4.0, False, [("one", 1.0, 1.5), ("to", 3.8, 4.0)])
    assert merge([cut, second], overlap=1.0) == "one two three"


@pytest.mark.parametrize(
    ("reference", "hypothesis"),
    [
        ("one two three", "one two three"),
        ("one two three", "one three"),
        ("one two three", "one two two three four"),
        ("seven eight nine", "nine eight seven"),
        ("zero", "one two"),
    ],
)
def test_word_error_rate_agrees_with_jiwer(reference, hypothesis):
    assert word_error_rate(reference, hypothesis) == pytest.approx(jiwer.wer(reference, hypothesis))


def test_corpus_error_rate_weights_by_reference_length():
    pairs = [("one two three four", "one two three four"), ("five six", "five")]
    assert corpus_error_rate(pairs) == pytest.approx(1 / 6)
    assert corpus_error_rate(pairs) == pytest.approx(
        jiwer.wer([r for r, _ in pairs], [h for _, h in pairs])
    )


def test_memory_plan_refuses_with_a_suggested_worker_count():
    MiB = 1024 * 1024
    plan = memcheck.MemoryPlan(
        workers=8, per_worker=50 * MiB, headroom=100 * MiB, available=300 * MiB
    )
    assert not plan.fits and plan.suggested == 4
    with pytest.raises(InsufficientMemory, match="use at most 4 worker") as info:
        memcheck.check(plan, "refuse")
    assert info.value.suggested == 4
    ok = memcheck.MemoryPlan(
        workers=4, per_worker=50 * MiB, headroom=100 * MiB, available=300 * MiB
    )
    memcheck.check(ok, "refuse")


def test_memory_plan_can_warn_instead(caplog):
    plan = memcheck.MemoryPlan(workers=2, per_worker=10, headroom=100, available=50)
    with caplog.at_level(logging.WARNING, logger="memwise"):
        memcheck.check(plan, "warn")
    assert "not even one recognizer fits" in caplog.text


def test_wav_checks_name_what_is_wrong():
    good = audio.wav_bytes(pcm(1.0))
    assert audio.read_wav(good) == pcm(1.0)
    with pytest.raises(InvalidAudio, match="not a readable WAV"):
        audio.read_wav(b"RIFF....garbage")
    with pytest.raises(InvalidAudio, match="truncated"):
        audio.read_wav(good[:-100])
    with pytest.raises(InvalidAudio, match="more than the 0 s"):
        audio.read_wav(good, max_seconds=0.5)
    import io
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(44100)
        wav.writeframes(bytes(4 * 441))
    with pytest.raises(InvalidAudio, match="44100 Hz, 2 channel"):
        audio.read_wav(buffer.getvalue())


def test_the_shipped_set_is_small_and_consistent():
    digits = audio.shipped("digits")
    assert len(digits) >= 4
    assert all(set(c.text.split()) <= set(audio.DIGITS) for c in digits)
    size = sum(p.stat().st_size for p in audio.AUDIO_DIR.iterdir())
    assert size < 5 * 1024 * 1024
    assert audio.shipped("sentence")
