"""The demo page of `osum serve`, driven in headless Chromium (Debian's `chromium`, through Playwright; never a
downloaded browser): an uploaded demo-corpus file and a recording from Chromium's fake microphone, each
asked for SER, and the page shows what the API answers. A screenshot of each is kept under
``runs/test-artifacts/`` (or ``$OSUM_TEST_ARTIFACTS``)."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest
from conftest import TINY, corpus_spec, data_args
from serve_helpers import Server, demo_files

from osum_core.cli.main import main
from osum_core.demo.corpus import synthesize_corpus

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SER = "<TRANSCRIBE> <EMOTION>"
ARTIFACTS = Path(os.environ.get("OSUM_TEST_ARTIFACTS", "runs/test-artifacts"))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ser_export(tmp_path_factory, registry) -> tuple[Path, Path]:
    """A tiny ASR+SER model trained long enough (240 steps) to end most answers with an emotion tag, exported;
    and its corpus."""
    root = tmp_path_factory.mktemp("ser")
    corpus = root / "corpus"
    synthesize_corpus(corpus, corpus_spec(("<TRANSCRIBE>", SER), 3, train_per_task=24, eval_per_task=6),
                      registry.recipes, workers=2)
    settings = [s for s in TINY if not s.startswith(("trainer.max_steps", "trainer.val_check_interval",
                                                     "eval.generation.max_new_tokens"))]
    assert main(["fit", "--tasks", "asr,ser", "--out", str(root / "run"), *data_args(corpus), *settings,
                 "trainer.max_steps=240", "trainer.val_check_interval=240", "eval.generation.max_new_tokens=40"]) == 0
    assert main(["export", "--ckpt", str(root / "run"), "--out", str(root / "ser_demo")]) == 0
    return root / "ser_demo", corpus


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install osum[test])")
    if not Path(CHROMIUM).is_file():
        pytest.skip("Chromium is not installed and could not be (make test runs `apt-get install chromium` as root); "
                    "the demo page's browser test needs it")
    with playwright.sync_playwright() as driver:
        yield driver


def launch(driver, *extra: str):
    return driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", *extra])


def answer_on_page(page, task_id: str) -> dict[str, str]:
    page.select_option("#task", task_id)
    page.click("#ask")
    page.wait_for_function("['done', 'error'].includes(document.querySelector('#status').dataset.state)",
                           timeout=120_000)
    return {name: page.inner_text(f"#{name}") for name in ("status", "reply", "transcript", "label", "duration")}


def test_the_page_answers_an_upload_and_a_recording_as_the_api_does(ser_export, browser, tmp_path):
    from osum_tasks.ser import LABELS

    export, corpus = ser_export
    server = Server(export, log=tmp_path / "serve.log")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        client = server.client()
        # The first SER test file whose answer carries an emotion (the tiny model ends most answers with one).
        answers = {}
        for file in demo_files(corpus, SER, 6):
            answer = client.chat.completions.create(model=f"{export.name}:ser", messages=[{"role": "user", "content": [
                {"type": "input_audio", "input_audio": {"data": base64.b64encode(file.read_bytes()).decode(),
                                                        "format": "wav"}}]}])
            answers[file] = answer.model_extra["osum"]
        file, expected = next((f, a) for f, a in answers.items() if a["label"] is not None)
        assert expected["label"] in LABELS

        chromium = launch(browser)
        page = chromium.new_page()
        page.goto(server.url)
        page.wait_for_function("document.querySelector('#task').options.length > 1")
        page.set_input_files("#file", str(file))
        page.wait_for_function("document.querySelector('#status').dataset.state === 'ready'")
        shown = answer_on_page(page, f"{export.name}:ser")
        page.screenshot(path=str(ARTIFACTS / "serve_page_upload.png"), full_page=True)
        chromium.close()
        assert shown["status"].startswith("done"), shown
        # The page sent the file as 16 kHz WAV (converted in the browser); the demo corpus is 16 kHz WAV
        # already, so the model heard the same samples and answered the same.
        assert shown["label"] == expected["label"] and shown["transcript"] == expected["transcript"]
        assert shown["reply"] == expected["text"]

        # The fake microphone plays the same file: recorded as webm/opus, converted to WAV by the page.
        chromium = launch(browser, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                          f"--use-file-for-fake-audio-capture={file}")
        page = chromium.new_page()
        page.goto(server.url)
        page.wait_for_function("document.querySelector('#task').options.length > 1")
        page.click("#record")
        page.wait_for_function("document.querySelector('#status').dataset.state === 'recording'")
        page.wait_for_timeout(2500)
        page.click("#record")
        page.wait_for_function("document.querySelector('#status').dataset.state === 'ready'")
        assert "recording: " in page.inner_text("#audio-info")
        recorded = answer_on_page(page, f"{export.name}:ser")
        # Word times (an SRWT answer's fields.timestamps) are drawn as bands over the waveform: the page's own
        # drawing, given a parse as the server sends it.
        band = page.evaluate("""() => {
            showParse({task: "srwt", transcript: "one two", label: null, duration: 2.5,
                       fields: {timestamps: [["one", 0.5, 1.0], ["two", 1.5, 2.0]]}});
            const canvas = document.querySelector('#waveform'), g = canvas.getContext('2d');
            const seconds = samples.length / 16000, at = (t) => Math.round(t / seconds * canvas.width);
            const alpha = (t) => g.getImageData(at(t), 5, 1, 1).data[3];
            return [alpha(0.75), alpha(1.25), alpha(1.75)];
        }""")
        assert band[0] > 0 and band[1] == 0 and band[2] > 0, band
        page.screenshot(path=str(ARTIFACTS / "serve_page_recording.png"), full_page=True)
        chromium.close()
        # Opus changes the samples: the answer may differ from the file's, but it is the model's, parsed.
        assert recorded["status"].startswith("done"), recorded
        assert recorded["reply"] and float(recorded["duration"].split()[0]) > 1.5
        assert recorded["label"] in (*LABELS, "—")
    finally:
        assert server.stop() == 0
