"""`concept-talker demo`: the tutor page, served on a free port and used the way people use it.

A real browser (Debian's chromium, headless, driven by playwright) uploads a spoken question, records one through the
microphone (chromium's fake capture device plays a WAV file) and presses Answer; the reply audio, its text and the
timings must appear. Bad input must give a message on the page, never a stack trace; two people at once must each
get their own reply. What is asserted is the page's behaviour, not the quality of the reply: the embedded model
answers poorly (README).

The browser test keeps a screenshot in its pytest temporary folder; `CONCEPT_TALKER_DEMO_SCREENSHOT=docs/demo.png`
also copies it there (how the README's picture is made).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile

pytest.importorskip("gradio", reason="the demo extra is not installed: pip install -e '.[demo]' (make setup does)")

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
# As root a sandboxed chromium does not start; the rest keeps a headless run from reaching for the network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"]
MAX_AUDIO_SECONDS = 3.0  # short replies keep the suite fast; the page's behaviour is the same


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Spoken questions from the project's TTS, and bad inputs, as files."""
    from concept_talker.data.tts import default_tts

    folder = tmp_path_factory.mktemp("clips")
    tts = default_tts()
    files = {}
    for name, text in (("brave", "What does brave mean?"), ("spell", "How do you spell the word necessary, please?")):
        wave, rate = tts.synthesize(text)
        files[name] = folder / f"{name}.wav"
        soundfile.write(files[name], np.asarray(wave, dtype=np.float32), int(rate), subtype="PCM_16")
    rate = 16000
    files["silence"] = folder / "silence.wav"
    soundfile.write(files["silence"], np.zeros(2 * rate, np.float32), rate)
    files["too_long"] = folder / "too_long.wav"
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, 31 * rate).astype(np.float32)
    soundfile.write(files["too_long"], noise, rate)
    files["unreadable"] = folder / "notes.wav"
    files["unreadable"].write_text("these are notes, not audio\n")
    files["short_voice"] = folder / "short_voice.wav"
    soundfile.write(files["short_voice"], noise[: rate // 2], rate)
    return files


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`concept-talker demo` with the embedded default model, on a free port; its URL."""
    folder = tmp_path_factory.mktemp("demo-server")
    port = free_port()
    log = open(folder / "server.log", "w")
    env = {**os.environ, "GRADIO_TEMP_DIR": str(folder / "gradio"), "GRADIO_ANALYTICS_ENABLED": "False"}
    process = subprocess.Popen(
        [sys.executable, "-m", "concept_talker.cli", "demo", "--port", str(port), "--max-new-tokens", "24",
         "--max-audio-seconds", str(MAX_AUDIO_SECONDS)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 240
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"the demo server exited ({process.returncode}):\n{(folder / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the demo server did not answer in 240 s:\n{(folder / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
    server_log = (folder / "server.log").read_text()
    assert "Traceback" not in server_log, server_log[-3000:]


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    from gradio_client import Client

    return Client(server, verbose=False, download_files=str(tmp_path_factory.mktemp("client-downloads")))


def submit(client, question=None, instruction="", voice=None):
    """Send one turn to the page's queue; the job's `result()` is the last update, `outputs()` every update."""
    from gradio_client import handle_file

    return client.submit(handle_file(str(question)) if question else None, instruction,
                         handle_file(str(voice)) if voice else None, api_name="/answer")


def ask(client, question=None, instruction="", voice=None):
    return submit(client, question, instruction, voice).result(timeout=120)


@pytest.fixture(scope="module")
def playwright():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no browser at {CHROMIUM}: install Debian's chromium (`make setup` does, as root) to run the "
                    "demo page in a real browser")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra)")
    with playwright_api.sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="module")
def browser(playwright):
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


def wait_for_reply(page, timeout_ms: int = 120_000) -> dict:
    """Wait until the page shows the reply audio (with a duration), its text and the timings; what they hold."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    try:
        page.wait_for_function(
            """() => {
                const value = id => (document.querySelector(`#${id} textarea`) || {}).value || "";
                const audio = document.querySelector("#reply-audio audio");
                return value("timings") && value("reply-text") && audio && audio.duration > 0 && isFinite(audio.duration);
            }""",
            timeout=timeout_ms,
        )
    except PlaywrightTimeoutError:  # say what the page showed instead, so that a failure can be read
        status = page.evaluate("() => (document.querySelector('#status') || {}).innerText || ''")
        raise AssertionError(f"No reply shown within {timeout_ms / 1000:.0f} s; the page's status: {status!r}") from None
    return page.evaluate(
        """() => ({
            text: document.querySelector("#reply-text textarea").value,
            heard: document.querySelector("#heard textarea").value,
            timings: document.querySelector("#timings textarea").value,
            duration: document.querySelector("#reply-audio audio").duration,
            model: document.querySelector("#model-info").innerText,
            status: document.querySelector("#status").innerText,
            page: document.body.innerText,
        })"""
    )


def test_the_page_answers_in_a_real_browser(server, browser, clips, tmp_path):
    """Upload a spoken question, type an instruction, press Answer: reply audio, text and timings appear."""
    page = browser.new_page(viewport={"width": 1280, "height": 960})
    page.goto(server, wait_until="networkidle")
    assert "the embedded default" in page.inner_text("#model-info")  # says plainly which model is loaded
    page.locator("#question input[type=file]").set_input_files(str(clips["brave"]))
    page.wait_for_selector("#question audio", state="attached", timeout=30_000)
    page.fill("#instruction textarea", "Speak slowly.")
    page.click("#answer")
    shown = wait_for_reply(page)
    assert shown["duration"] > 0 and shown["text"].strip()
    assert "first audio" in shown["timings"].lower() and "real-time factor" in shown["timings"]
    assert "Traceback" not in shown["page"]
    page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
    print(f"screenshot: {tmp_path / 'demo.png'}")
    if os.environ.get("CONCEPT_TALKER_DEMO_SCREENSHOT"):
        shutil.copyfile(tmp_path / "demo.png", os.environ["CONCEPT_TALKER_DEMO_SCREENSHOT"])

    # the same page, a second turn with nothing to answer: a message, not a stack trace
    page.locator("#question button[aria-label='Clear']").click()
    page.click("#answer")
    page.wait_for_function("() => /No question/.test(document.querySelector('#status').innerText)", timeout=30_000)
    assert "Traceback" not in page.inner_text("body")
    page.close()


def test_a_question_recorded_through_the_microphone(server, playwright, clips):
    """Chromium's fake microphone plays the question's WAV; the page records it and answers."""
    args = CHROMIUM_ARGS + ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                            f"--use-file-for-fake-audio-capture={clips['brave']}"]
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
    try:
        page = browser.new_context(permissions=["microphone"]).new_page()
        page.goto(server, wait_until="networkidle")
        page.click("#question button[aria-label='Record audio']")
        page.locator("#question button:has-text('Record')").first.click()
        time.sleep(2.0)
        # The page uploads the recording when it stops; answering before that upload returns would send no
        # question (on a loaded machine the upload can take a while).
        with page.expect_response(lambda r: r.url.endswith("/gradio_api/upload") and r.ok, timeout=60_000):
            page.locator("#question button:has-text('Stop'):visible").first.click()
        page.wait_for_selector("#question audio", state="attached", timeout=30_000)
        page.click("#answer")
        shown = wait_for_reply(page)
        assert shown["duration"] > 0 and shown["text"].strip() and "real-time factor" in shown["timings"]
    finally:
        browser.close()


@pytest.mark.parametrize(
    "case, words",
    [
        ("nothing", "No question"),
        ("silence", "silent"),
        ("unreadable", "Could not read the question as audio"),
        ("too_long", "at most 30 s"),
        ("short_voice", "reference voice is 0.50 s long"),
        ("conflicting_instruction", "Conflicting instructions"),
    ],
)
def test_bad_input_gets_a_message_not_a_stack_trace(client, clips, case, words):
    question = None if case == "nothing" else clips.get(case, clips["brave"])
    voice = clips["short_voice"] if case == "short_voice" else None
    instruction = "Speak slowly and quickly." if case == "conflicting_instruction" else ""
    audio, text, heard, timings, status = ask(client, question, instruction, voice)
    assert status.startswith("⚠️") and words in status, status
    assert not text and not timings and "Traceback" not in status


def test_the_reply_streams(client, clips):
    """Audio chunks arrive with the reply text written so far; the transcript and timings come at the end."""
    job = submit(client, clips["spell"])
    final = job.result(timeout=120)
    updates = job.outputs()
    speaking = [update for update in updates if update[4] == "Speaking..."]
    assert len(speaking) >= 2 and updates[-1][4] == "Done." and final[4] == "Done."
    assert all(final[1].startswith(update[1]) for update in speaking)  # the text grows toward the reply
    assert not any(update[3] for update in speaking) and final[3]  # timings once the reply is complete


def test_two_people_at_once_get_their_own_replies(server, client, clips, tmp_path):
    """Two people (two sessions) send their turns together: the queue answers them one by one, each with its own
    reply, the same as each gets alone."""
    from gradio_client import Client

    alone = {name: ask(client, clips[name]) for name in ("brave", "spell")}
    other = Client(server, verbose=False, download_files=str(tmp_path))
    jobs = {"brave": submit(client, clips["brave"]), "spell": submit(other, clips["spell"])}  # both in flight
    together = {name: job.result(timeout=120) for name, job in jobs.items()}
    for name in ("brave", "spell"):
        seconds = soundfile.info(str(clips[name])).duration
        _, text, heard, timings, status = together[name]
        assert status == "Done." and f"for a {seconds:.2f} s question" in timings
        assert text == alone[name][1] and heard == alone[name][2]  # greedy: the same reply as when alone


def test_app_py_serves_the_same_page(monkeypatch, tmp_path):
    """The Space entry builds the page (the embedded model, offline) without launching it."""
    import runpy

    import gradio as gr

    monkeypatch.chdir(REPO)
    monkeypatch.delenv("CONCEPT_TALKER_MODEL", raising=False)
    namespace = runpy.run_path(str(REPO / "app.py"), run_name="app")
    assert isinstance(namespace["demo"], gr.Blocks)
    config = namespace["demo"].get_config_file()
    props = {c.get("props", {}).get("elem_id"): c.get("props", {}) for c in config["components"]}
    assert {"question", "instruction", "voice", "answer", "reply-audio", "reply-text", "heard", "timings"} <= set(props)
    assert "the embedded default" in props["model-info"]["value"]


def test_without_ffmpeg_the_whole_reply_is_handed_over_at_the_end(assets):
    """Where ffmpeg is missing the page cannot stream; the last update then holds the whole reply."""
    from concept_talker.app.demo import Tutor

    tutor = Tutor(max_new_tokens=8, max_audio_seconds=1.0)
    question = assets / "speech" / "ljspeech-dev" / "wavs" / "LJ001-0002.flac"
    updates = list(tutor.respond(str(question), "", None, stream_audio=False))
    assert all(update[0] is None for update in updates[:-1])
    (rate, samples), text, heard, timings, status = updates[-1]
    assert status == "Done." and rate == 16000 and samples.dtype == np.int16 and 0 < len(samples) <= rate * 1.0 + 1
    assert text and "real-time factor" in timings


def test_a_model_with_random_weights_says_so(assets):
    from concept_talker.app.demo import Tutor

    tutor = Tutor("tiny", max_new_tokens=4, max_audio_seconds=0.5)
    assert "RANDOM weights" in tutor.model_markdown()
    question = assets / "speech" / "ljspeech-dev" / "wavs" / "LJ001-0002.flac"
    *_, (audio, text, heard, timings, status) = tutor.respond(str(question), "", None, stream_audio=False)
    assert status == "Done." and heard.startswith("(none") and audio[1].size > 0
