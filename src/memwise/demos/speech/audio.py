"""Audio in the one shape the recognizer takes: 16 kHz, mono, 16-bit little-endian PCM.

Speech comes from espeak-ng (a system package) when it is installed, resampled from its
native 22050 Hz; the scenario and the benchmark use a small set generated that way once and
shipped in ``audio/`` (``manifest.json`` lists each file's text), so they need no system
package. ``build_set`` regenerates that set.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

from memwise.errors import InvalidAudio

SAMPLE_RATE = 16_000
SAMPLE_WIDTH = 2  # bytes: signed 16-bit
CHANNELS = 1
AUDIO_DIR = Path(__file__).with_name("audio")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Sentences for the language-model mode (open vocabulary), short and plainly spoken.
SENTENCES = (
    "please open the door",
    "turn on the light in the kitchen",
)
# espeak-ng voice and words per minute (a little slower than its default, as one reads numbers
# out): of the variants tried, the one the US English acoustic model recognizes best.
VOICE = "en-us+f2"
_SPEED = 140


@dataclass(frozen=True)
class Clip:
    """One recording and what is said in it."""

    name: str
    text: str
    pcm: bytes  # 16 kHz mono s16le

    @property
    def seconds(self) -> float:
        return seconds_of(self.pcm)


def seconds_of(pcm: bytes) -> float:
    """The duration of 16 kHz mono 16-bit PCM."""
    return len(pcm) / (SAMPLE_RATE * SAMPLE_WIDTH)


def read_wav(data: bytes, *, max_seconds: float | None = None) -> bytes:
    """The PCM inside a WAV file, checked to be 16 kHz mono 16-bit; ``InvalidAudio`` if not."""
    try:
        with wave.open(io.BytesIO(data)) as wav:
            rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
            frames = wav.getnframes()
            if (rate, channels, width) != (SAMPLE_RATE, CHANNELS, SAMPLE_WIDTH):
                raise InvalidAudio(
                    f"the WAV file is {rate} Hz, {channels} channel(s), {8 * width}-bit; the "
                    f"recognizer takes {SAMPLE_RATE} Hz mono 16-bit PCM: convert it first, e.g. "
                    f"`sox in.wav -r {SAMPLE_RATE} -c 1 -b 16 out.wav`"
                )
            if max_seconds is not None and frames > max_seconds * SAMPLE_RATE:
                raise InvalidAudio(
                    f"the file lasts {frames / SAMPLE_RATE:.0f} s, more than the {max_seconds:.0f}"
                    " s accepted in one request: split it, or stream it over the WebSocket"
                )
            pcm = wav.readframes(frames)
    except (wave.Error, EOFError) as exc:
        raise InvalidAudio(
            f"not a readable WAV file ({exc or 'it ends too early'}); send a 16 kHz mono 16-bit WAV"
        ) from exc
    if len(pcm) != frames * SAMPLE_WIDTH:
        raise InvalidAudio(
            f"the WAV file is truncated: its header announces {frames} samples, it holds "
            f"{len(pcm) // SAMPLE_WIDTH}"
        )
    return pcm


def wav_bytes(pcm: bytes) -> bytes:
    """``pcm`` (16 kHz mono 16-bit) as a WAV file."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(CHANNELS)
        wav.setsampwidth(SAMPLE_WIDTH)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(pcm)
    return buffer.getvalue()


def espeak_available() -> bool:
    """Whether espeak-ng is installed (the tests synthesize fresh speech with it)."""
    return shutil.which("espeak-ng") is not None


def synthesize(text: str, *, voice: str = VOICE, speed: int = _SPEED) -> bytes:
    """``text`` spoken by espeak-ng, as 16 kHz mono 16-bit PCM."""
    import numpy as np

    done = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
        capture_output=True,
        check=True,
        timeout=60,
    )
    with wave.open(io.BytesIO(done.stdout)) as wav:
        rate = wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    # Band-limited resampling in the frequency domain: dropping the bins above the new
    # Nyquist frequency is the anti-aliasing filter.
    size = round(len(samples) * SAMPLE_RATE / rate)
    spectrum = np.fft.rfft(samples.astype(np.float64))[: size // 2 + 1]
    resampled = np.fft.irfft(spectrum, size) * (size / len(samples))
    return np.clip(np.round(resampled), -32768, 32767).astype("<i2").tobytes()


def digit_text(rng: random.Random, words: int) -> str:
    """A random string of spoken digits, as a phone number or a code is read out."""
    return " ".join(rng.choice(DIGITS) for _ in range(words))


def build_set(directory: Path = AUDIO_DIR, *, files: int = 8, words: int = 28) -> None:
    """Generate the shipped set: ``files`` digit recordings and the language-model sentences.

    Deterministic texts (a fixed seed); written as WAV with a ``manifest.json`` of texts.
    """
    rng = random.Random(4)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {}
    texts = [(f"digits-{i:02d}", digit_text(rng, words)) for i in range(files)]
    texts += [(f"sentence-{i:02d}", text) for i, text in enumerate(SENTENCES)]
    for name, text in texts:
        (directory / f"{name}.wav").write_bytes(wav_bytes(synthesize(text)))
        manifest[name] = text
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def shipped(kind: str = "digits") -> list[Clip]:
    """The shipped recordings of one kind (``"digits"`` or ``"sentence"``), in name order."""
    manifest: dict[str, str] = json.loads((AUDIO_DIR / "manifest.json").read_text())
    return [
        Clip(name, text, read_wav((AUDIO_DIR / f"{name}.wav").read_bytes()))
        for name, text in sorted(manifest.items())
        if name.startswith(kind)
    ]
