"""The speech server scenario: real pocketsphinx recognizers on speech freshly synthesized by
espeak-ng, behind the service and its HTTP/WebSocket API on the loopback interface."""

from __future__ import annotations

import json
import random
import threading
import time

import httpx
import pytest
from websockets.sync.client import connect

from memwise.demos.speech import audio
from memwise.demos.speech.accuracy import corpus_error_rate
from memwise.demos.speech.app import MAX_MESSAGE_BYTES
from memwise.demos.speech.batch import kill_mid_file
from memwise.demos.speech.recognizer import RecognizerConfig, recognize
from memwise.demos.speech.segments import split
from memwise.demos.speech.serve import serving
from memwise.demos.speech.service import ServiceConfig, SpeechService
from memwise.errors import (
    InsufficientMemory,
    InvalidAudio,
    ProtocolError,
    TranscriptionFailed,
    WorkerInitError,
)
from memwise.pool.queue import lane_for

pytestmark = pytest.mark.timeout(120)
WAIT = 90.0
# The digit grammar on espeak-ng's voice: measured around 3 %; the bar leaves room for the
# odd confusion on fresh random digits.
MAX_WER = 0.10


@pytest.fixture(scope="module")
def fresh():
    """Three fresh recordings of random digits (about 8 s each), synthesized now."""
    # Only the tests on fresh speech need espeak-ng; the others run without it.
    if not audio.espeak_available():
        pytest.skip("fresh speech needs espeak-ng (apt-get install espeak-ng); .ci/run installs it")
    rng = random.Random()
    texts = [audio.digit_text(rng, 20) for _ in range(3)]
    return [audio.Clip(f"fresh-{i}", text, audio.synthesize(text)) for i, text in enumerate(texts)]


@pytest.fixture(scope="module")
def service():
    """A 2-worker grammar service shared by the tests that never kill its workers."""
    progress = []
    with SpeechService(ServiceConfig(workers=2), progress=lambda *p: progress.append(p)) as svc:
        svc.progress = progress
        yield svc


@pytest.fixture(scope="module")
def url(service):
    with serving(service) as base:
        yield base


# One 20-word clip, not a corpus: a few confusions on random digits are normal (the corpus bar
# is MAX_WER); a lost 4 s segment costs a third of the clip's words, well above this.
CLIP_WER = 0.3


def close_to(spoken, heard):
    """Whether ``heard`` reads as a transcript of ``spoken`` (one file's words)."""
    return corpus_error_rate([(spoken, heard)]) <= CLIP_WER


def wait_until(condition):
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def ws_url(url):
    return url.replace("http://", "ws://") + "/stream"


def test_start_up_reports_progress_and_measured_memory(service):
    assert service.progress[-1] == (2, 2)
    assert [ready for ready, _ in service.progress] == sorted(r for r, _ in service.progress)
    assert service.memory.per_worker > 10 * 1024 * 1024
    assert service.memory.fits


def test_concurrent_files_are_transcribed_in_order_on_one_worker_each(service, fresh):
    jobs = []
    for clip in fresh:
        job = service.open(clip.name)
        job.feed(clip.pcm)
        job.finish()
        jobs.append(job)
    pairs = []
    for clip, job in zip(fresh, jobs, strict=True):
        results = list(job.results(WAIT))
        assert [r.index for r in results] == list(range(len(results)))
        assert len({r.pid for r in results}) == 1  # sticky: one worker per file
        pairs.append((clip.text, job.transcript(results).text))
    assert corpus_error_rate(pairs) <= MAX_WER, pairs
    assert service.in_progress() == []


def test_files_are_spread_evenly_over_the_workers(service, fresh):
    jobs = [service.open(f"even-{i}") for i in range(4)]
    for job in jobs:
        job.feed(fresh[0].pcm)
        job.finish()
    pids = [{r.pid for r in job.results(WAIT)} for job in jobs]
    assert all(len(p) == 1 for p in pids)
    assert sorted(job.lane for job in jobs) == [0, 0, 1, 1]
    assert len(set.union(*pids)) == 2


def test_resize_moves_only_the_keys_of_the_new_lane_and_none_in_progress(service, fresh):
    keys = [f"file-{i}" for i in range(12)]
    second = split(fresh[0].pcm[: audio.SAMPLE_RATE * audio.SAMPLE_WIDTH])[0]

    def lanes():
        pids = {
            key: service.pool.options(key=key).submit(recognize, second).result(WAIT).pid
            for key in keys
        }
        lane_of = {w.pid: w.lane for w in service.pool.snapshot().workers}
        return {key: lane_of[pid] for key, pid in pids.items()}

    before = lanes()
    assert before == {key: lane_for(key, 2) for key in keys}
    in_progress = service.open("in-progress")
    in_progress.feed(fresh[1].pcm)
    in_progress.finish()
    service.resize(3)
    wait_until(lambda: [w.state for w in service.pool.snapshot().workers].count("starting") == 0)
    after = lanes()
    try:
        results = list(in_progress.results(WAIT))
        assert len({r.pid for r in results}) == 1  # its segments never changed worker
        moved = {key for key in keys if after[key] != before[key]}
        assert moved and all(after[key] == 2 for key in moved)  # only to the new lane
        assert after == {key: lane_for(key, 3) for key in keys}
    finally:
        service.resize(2)
        wait_until(lambda: len([w for w in service.pool.snapshot().workers if w.pid]) == 2)


def test_unknown_mode_and_duplicate_task_are_refused(service):
    with pytest.raises(ProtocolError, match="mode must be one of"):
        service.open("m", mode="lm")
    job = service.open("dup")
    with pytest.raises(ProtocolError, match="already in progress"):
        service.open("dup")
    with pytest.raises(InvalidAudio, match="whole number of 16-bit samples"):
        job.feed(b"\0\0\0")
    assert job.cancel() == 0


def test_websocket_streams_ordered_partials_and_a_final_equal_to_post(url, fresh):
    clip = fresh[0]
    posted = httpx.post(
        f"{url}/transcribe?task=post-0", content=audio.wav_bytes(clip.pcm), timeout=WAIT
    )
    assert posted.status_code == 200, posted.text
    with connect(ws_url(url), open_timeout=WAIT) as ws:
        ws.send(json.dumps({"type": "start", "task": "ws-0", "source": "mic"}))
        assert json.loads(ws.recv(WAIT)) == {"type": "started", "task": "ws-0"}
        for i in range(0, len(clip.pcm), 8000):  # quarter-second frames, as a microphone
            ws.send(b"ws-0\0" + clip.pcm[i : i + 8000])
        ws.send(json.dumps({"type": "end", "task": "ws-0"}))
        partials = []
        while (message := json.loads(ws.recv(WAIT)))["type"] == "partial":
            partials.append(message)
    assert message["type"] == "final"
    assert [p["index"] for p in partials] == list(range(len(partials)))
    assert message["text"] == " ".join(p["text"] for p in partials if p["text"])
    # Streamed or posted, the same words (not always identical: a segment's result can differ
    # by a word between two workers, whose decoders have heard different audio before).
    assert close_to(clip.text, message["text"]) and close_to(clip.text, posted.json()["text"])


def test_websocket_bad_input_gets_clear_errors_and_the_connection_goes_on(url, fresh):
    with connect(ws_url(url), open_timeout=WAIT) as ws:

        def error_for(frame):
            ws.send(frame)
            message = json.loads(ws.recv(WAIT))
            assert message["type"] == "error", message
            return message

        assert error_for("{not json")["error"] == "ProtocolError"
        assert "unknown message type" in error_for(json.dumps({"type": "play"}))["message"]
        assert "JSON object" in error_for("[1, 2]")["message"]
        wrong_rate = error_for(json.dumps({"type": "start", "task": "r", "sample_rate": 44100}))
        assert wrong_rate["error"] == "InvalidAudio" and "44100 Hz" in wrong_rate["message"]
        wrong_format = error_for(json.dumps({"type": "start", "task": "f", "encoding": "mp3"}))
        assert "resample" in wrong_format["message"]
        unknown = error_for(b"nobody\0" + bytes(320))
        assert unknown["task"] == "nobody" and "unknown task id" in unknown["message"]
        assert "NUL byte" in error_for(b"no separator at all")["message"]
        assert "unknown task id" in error_for(json.dumps({"type": "end", "task": "x"}))["message"]
        oversized = error_for(b"t\0" + bytes(MAX_MESSAGE_BYTES + 2))
        assert oversized["error"] == "InvalidAudio" and "smaller frames" in oversized["message"]
        ws.send(json.dumps({"type": "start", "task": "ok"}))
        assert json.loads(ws.recv(WAIT))["type"] == "started"
        assert "whole number" in error_for(b"ok\0" + bytes(3))["message"]
        assert (
            "already in progress"
            in error_for(json.dumps({"type": "start", "task": "ok"}))["message"]
        )
        # After all that, the connection still transcribes.
        ws.send(b"ok\0" + fresh[1].pcm)
        ws.send(json.dumps({"type": "end", "task": "ok"}))
        while (message := json.loads(ws.recv(WAIT)))["type"] == "partial":
            pass
        assert message["type"] == "final" and message["text"]


def test_http_bad_input(url):
    def post(query, body):
        return httpx.post(f"{url}/transcribe{query}", content=body, timeout=WAIT)

    garbage = post("", b"not a wav file")
    assert garbage.status_code == 415 and "not a readable WAV" in garbage.json()["message"]
    import io
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(bytes(1600))
    assert "8000 Hz" in post("", buffer.getvalue()).json()["message"]
    too_big = post("", bytes(41 * 1024 * 1024))
    assert too_big.status_code == 413 and "WebSocket" in too_big.json()["message"]
    bad_mode = post("?mode=klingon", audio.wav_bytes(bytes(3200)))
    assert bad_mode.status_code == 400 and "mode must be one of" in bad_mode.json()["message"]


def test_other_sites_and_rebound_host_names_are_refused(url):
    from websockets.exceptions import InvalidStatus
    from websockets.typing import Origin

    with pytest.raises(InvalidStatus, match="403"):
        connect(ws_url(url), origin=Origin("https://evil.example"), open_timeout=WAIT)
    rebound = httpx.post(
        f"{url}/transcribe",
        content=audio.wav_bytes(bytes(3200)),
        headers={"Host": "rebound.example"},
        timeout=WAIT,
    )
    assert rebound.status_code == 421
    with connect(ws_url(url), origin=Origin(url), open_timeout=WAIT) as ws:
        ws.send(json.dumps({"type": "nonsense"}))
        assert json.loads(ws.recv(timeout=WAIT))["type"] == "error"


def test_an_open_event_stream_does_not_hold_the_server_shutdown(service):
    with httpx.Client(timeout=WAIT) as client:
        with serving(service) as base:
            request = client.build_request("GET", f"{base}/api/events")
            events = client.send(request, stream=True)
            chunks = events.iter_bytes()  # kept: a dropped iterator closes the connection
            assert next(chunks).startswith(b"retry:")
        # serving() returned with the stream still open: the server ended it.
        assert b"".join(chunks) == b""
        events.close()


def test_the_dashboard_and_metrics_are_served_beside_the_api(url):
    assert httpx.get(f"{url}/healthz", timeout=WAIT).status_code == 200
    metrics = httpx.get(f"{url}/metrics", timeout=WAIT)
    assert metrics.status_code == 200 and "memwise" in metrics.text
    assert "<html" in httpx.get(f"{url}/", timeout=WAIT).text.lower()
    status = httpx.get(f"{url}/api/speech", timeout=WAIT).json()
    assert status["workers"] == 2 and status["on_crash"] == "rerun"


def test_client_disconnect_mid_file_leaves_nothing_queued(service, url, fresh):
    long_file = b"".join(clip.pcm for clip in fresh) * 2  # ~50 s: a dozen segments
    sent = long_file[: MAX_MESSAGE_BYTES - 16]
    segments = len(split(sent)) - 1  # the last one waits for more audio or the end
    done_before = service.pool.snapshot().done
    with connect(ws_url(url), open_timeout=WAIT) as ws:
        ws.send(json.dumps({"type": "start", "task": "gone"}))
        ws.send(b"gone\0" + sent)
        assert json.loads(ws.recv(WAIT))["type"] == "started"
        assert json.loads(ws.recv(WAIT))["type"] == "partial"  # work is under way
    wait_until(lambda: not service.in_progress() and not service.pool.snapshot().queued)
    time.sleep(0.5)  # a segment still running when the client left may finish meanwhile
    assert service.pool.snapshot().done - done_before < segments  # the rest never ran


def test_microphone_audio_overtakes_queued_batch_files_and_shutdown_drains(fresh):
    with SpeechService(ServiceConfig(workers=1)) as one:
        batch = []
        for i in range(3):
            job = one.open(f"batch-{i}")
            job.feed(fresh[i].pcm[: 7 * audio.SAMPLE_RATE * audio.SAMPLE_WIDTH])  # 2 segments
            job.finish()
            batch.append(job)
        mic = one.open("mic", source="mic")
        mic.feed(fresh[0].pcm[: 3 * audio.SAMPLE_RATE * audio.SAMPLE_WIDTH])
        mic.finish()
        done = {}
        futures = [(job.task_id, f) for job in [*batch, mic] for f in job.futures]
        for name, future in futures:
            future.add_done_callback(lambda _, name=name: done.setdefault(name, time.monotonic()))
        list(mic.results(WAIT))
        for job in batch:
            list(job.results(WAIT))
        # Graceful shutdown with a deadline: a file still in progress at the deadline is cut.
        left = one.open("left")
        left.feed(fresh[1].pcm)
        left.finish()
        assert one.close(deadline=0.0) == ["left"]
        with pytest.raises(TranscriptionFailed, match="shutting down"):
            one.open("late")
    # Submitted last, finished before the batch files' last segments (a worker may already
    # hold a segment or two sent ahead, so "before the last" is the bound).
    assert done["mic"] < done["batch-1"] and done["mic"] < done["batch-2"]


def run_with_kill(service, fresh):
    victim = service.open("victim")
    victim.feed(fresh[0].pcm + fresh[1].pcm)
    victim.finish()
    other = service.open("other")
    other.feed(fresh[2].pcm)
    other.finish()
    stop = threading.Event()
    killed = []
    killer = threading.Thread(target=lambda: killed.append(kill_mid_file(service, victim, stop)))
    killer.start()
    try:
        other_text = other.transcript(list(other.results(WAIT))).text
        try:
            outcome = victim.transcript(list(victim.results(WAIT))).text
        except TranscriptionFailed as exc:
            outcome = exc
    finally:
        stop.set()
        killer.join()
    assert killed[0] is not None, "the worker was never caught mid-file"
    return outcome, other_text


def test_worker_killed_mid_file_reruns_the_lost_segment(fresh):
    with SpeechService(ServiceConfig(workers=2, on_crash="rerun")) as svc:
        outcome, other_text = run_with_kill(svc, fresh)
        assert svc.pool.snapshot().restarts == 1
    # The file completes (a transcript, not TranscriptionFailed) and reads as what was said.
    assert isinstance(outcome, str), outcome
    assert close_to(f"{fresh[0].text} {fresh[1].text}", outcome)
    assert close_to(fresh[2].text, other_text)


def test_worker_killed_mid_file_fails_that_file_when_so_configured(fresh):
    with SpeechService(ServiceConfig(workers=2, on_crash="fail")) as svc:
        outcome, other_text = run_with_kill(svc, fresh)
        # The failed file's other segments are dropped, not left queued.
        wait_until(lambda: not svc.in_progress() and not svc.pool.snapshot().queued)
        assert close_to(fresh[2].text, svc.transcribe("after", fresh[2].pcm).text)  # serves on
    assert isinstance(outcome, TranscriptionFailed)
    assert "victim" in str(outcome) and "on_crash='fail'" in str(outcome)
    assert close_to(fresh[2].text, other_text)


def test_a_recognizer_that_cannot_load_stops_start_up_with_its_reason(tmp_path):
    config = ServiceConfig(workers=2, recognizer=RecognizerConfig(model_dir=str(tmp_path)))
    with pytest.raises(WorkerInitError, match="no acoustic model under"):
        SpeechService(config)


def test_the_memory_check_refuses_a_configuration_that_does_not_fit():
    config = ServiceConfig(workers=16, memory_limit="400 MiB", headroom="200 MiB")
    with pytest.raises(InsufficientMemory, match="use at most") as info:
        SpeechService(config)
    assert 0 < info.value.suggested < 16
