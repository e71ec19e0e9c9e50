"""``memwise bench speech``: the speech server's recognizers, 1 worker against 2, in one run.

The shipped digit recordings (about 10 s each; four of them with ``--quick``) are submitted
at once as separate files to a service with the digit grammar, with 1 worker and with 2,
alternately, twice each (once with ``--quick``), keeping each side's fastest run and its
largest memory; then to a fresh 2-worker service while one worker is SIGKILLed in the middle
of a file (``on_crash="rerun"``, the default). Figures per run:

- ``seconds`` (wall, from the first submission to the last transcript) and ``audio_s_per_s``
  (seconds of audio transcribed per second): throughput;
- ``rtf_max`` / ``rtf_mean``: real-time factor per worker, recognizer seconds per second of
  audio that worker handled (below 1 is faster than real time);
- ``private_mb``: peak private memory (RssAnon) of the whole service, this process plus its
  workers, sampled every 50 ms; ``workers_private_mb``: the workers alone; ``pss_mb``: the
  same total as PSS. Never summed RSS, which would count the shared libraries N times;
- ``wer``: word error rate against the texts spoken; ``failed``: files without a transcript.

Targets (issue 13): throughput with 2 workers >= 1.8x that with 1; service memory with 2
workers <= 2.1x that with 1 (the seed's own bound is 2.5x); in the kill run, every other file
completes and the killed file re-runs to the same transcript as without the kill.
"""

from __future__ import annotations

from typing import TypedDict

from rich.console import Console
from rich.table import Table

from memwise.demos.speech import audio
from memwise.demos.speech.accuracy import corpus_error_rate
from memwise.demos.speech.batch import BatchRun, transcribe_all
from memwise.demos.speech.service import ServiceConfig, SpeechService

MB = 1_000_000
SPEEDUP_TARGET = 1.8
MEMORY_RATIO_TARGET = 2.1
QUICK_FILES = 4
REPEATS = 2


class Target(TypedDict):
    value: float
    target: str
    met: bool


class SpeechResult(TypedDict):
    benchmark: str
    results: dict[str, dict[str, float]]
    targets: dict[str, Target]


def run(quick: bool = False) -> SpeechResult:
    clips = audio.shipped("digits")[: QUICK_FILES if quick else None]
    runs: dict[str, BatchRun] = {}
    # 1 and 2 workers alternate, best of ``repeats`` each: on a shared machine the load
    # drifts over minutes, and alternating exposes both sides to the same drift.
    with (
        SpeechService(ServiceConfig(workers=1)) as single,
        SpeechService(ServiceConfig(workers=2)) as double,
    ):
        tries: dict[str, list[BatchRun]] = {"1 worker": [], "2 workers": []}
        for service in (single, double):
            transcribe_all(service, clips[:1], prefix="warm-up-")  # first-use costs out
        for attempt in range(1 if quick else REPEATS):
            for name, service in (("1 worker", single), ("2 workers", double)):
                tries[name].append(transcribe_all(service, clips, prefix=f"{attempt}-"))
    for name, attempts in tries.items():
        runs[name] = min(attempts, key=lambda r: r.seconds)
        # Memory: the worst of the attempts, not the fastest one's.
        runs[name].peak_private = max(r.peak_private for r in attempts)
        runs[name].peak_workers_private = max(r.peak_workers_private for r in attempts)
        runs[name].peak_pss = max(r.peak_pss for r in attempts)
    with SpeechService(ServiceConfig(workers=2)) as service:
        transcribe_all(service, clips[:1], prefix="warm-up-")
        runs["2 workers, one killed"] = transcribe_all(service, clips, kill=clips[0].name)
    results = {name: _figures(run, clips) for name, run in runs.items()}
    one, two, killed = runs["1 worker"], runs["2 workers"], runs["2 workers, one killed"]
    speedup = one.seconds / two.seconds
    memory = two.peak_private / one.peak_private
    others_done = all(c.name in killed.transcripts for c in clips if c.name != killed.killed_file)
    victim = killed.killed_file or ""
    same = victim in killed.transcripts and (
        killed.transcripts[victim].text == two.transcripts[victim].text
    )
    results["ratios"] = {
        "throughput_2_over_1": speedup,
        "private_2_over_1": memory,
        "workers_private_2_over_1": two.peak_workers_private / one.peak_workers_private,
        "pss_2_over_1": two.peak_pss / one.peak_pss,
    }
    return {
        "benchmark": "speech",
        "results": results,
        "targets": {
            "throughput, 2 workers over 1": {
                "value": speedup,
                "target": f">= {SPEEDUP_TARGET}x",
                "met": speedup >= SPEEDUP_TARGET,
            },
            "service private memory, 2 workers over 1": {
                "value": memory,
                "target": f"<= {MEMORY_RATIO_TARGET}x",
                "met": memory <= MEMORY_RATIO_TARGET,
            },
            "kill run: other files completed": {
                "value": float(others_done),
                "target": "== 1 (all)",
                "met": others_done,
            },
            "kill run: killed file re-ran to the same transcript": {
                "value": float(same and killed.killed_pid is not None),
                "target": "== 1 (on_crash='rerun')",
                "met": same and killed.killed_pid is not None,
            },
        },
    }


def _figures(run: BatchRun, clips: list[audio.Clip]) -> dict[str, float]:
    pairs = [(c.text, run.transcripts[c.name].text) for c in clips if c.name in run.transcripts]
    rtf = list(run.rtf.values())
    return {
        "seconds": run.seconds,
        "audio_s_per_s": run.audio_seconds / run.seconds,
        "rtf_max": max(rtf),
        "rtf_mean": sum(rtf) / len(rtf),
        "workers_used": float(len(rtf)),
        "private_mb": run.peak_private / MB,
        "workers_private_mb": run.peak_workers_private / MB,
        "pss_mb": run.peak_pss / MB,
        "wer": corpus_error_rate(pairs),
        "failed": float(len(run.failures)),
        "killed": float(run.killed_pid is not None),
    }


def print_table(result: SpeechResult, console: Console | None = None) -> None:
    console = console or Console()
    columns = (
        ("seconds", "wall s", ".1f"),
        ("audio_s_per_s", "audio s/s", ".2f"),
        ("rtf_max", "RTF max", ".2f"),
        ("rtf_mean", "RTF mean", ".2f"),
        ("private_mb", "private MB", ".0f"),
        ("workers_private_mb", "workers MB", ".0f"),
        ("pss_mb", "PSS MB", ".0f"),
        ("wer", "WER", ".3f"),
        ("failed", "failed", ".0f"),
    )
    table = Table(title="speech benchmark (digit grammar, shipped audio)")
    table.add_column("run")
    for _, header, _ in columns:
        table.add_column(header, justify="right")
    for name, figures in result["results"].items():
        if name != "ratios":
            table.add_row(name, *(format(figures[key], fmt) for key, _, fmt in columns))
    console.print(table)
    ratios = result["results"]["ratios"]
    console.print(
        "2 workers over 1: " + ", ".join(f"{name} {value:.2f}x" for name, value in ratios.items())
    )
    for name, target in result["targets"].items():
        mark = "[green]met[/]" if target["met"] else "[red]missed[/]"
        console.print(f"{mark} {name}: {target['value']:.2f} (target {target['target']})")


__all__ = ["print_table", "run"]
