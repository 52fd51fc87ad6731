"""``xtune board`` in a real browser: headless Chromium (Debian's package) driven by Playwright.

One board over a temporary runs root serves the whole module; the tests run in order, as a user would:
error paths on the form, then the tiny identity config trained (stopped mid-way and resumed), watched
to the end, its data previewed, its checkpoint chatted with, and exported. Screenshots of every tab go
to ``$XTUNE_ARTIFACTS`` (default ``tmp/artifacts``).
"""

import json
import os
import re
import shutil
import socket
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from xtune.paths import REPO_ROOT

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CONFIG = "tiny_llama_lora_identity_e3"
RUN = "identity"
TRAINING_TIMEOUT = 480_000  # ms: 510 tiny iterations on a busy 2-core machine, plus start-up twice


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def artifacts() -> Path:
    folder = Path(os.environ.get("XTUNE_ARTIFACTS", REPO_ROOT / "tmp" / "artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    from xtune.board.app import CSS, build_app

    root = tmp_path_factory.mktemp("runs")
    demo, state = build_app(root)
    port = _free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, css=CSS)
    yield f"http://127.0.0.1:{port}", state
    state.jobs.shutdown(timeout=30)
    demo.close()


@pytest.fixture(scope="module")
def page(board):
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: apt-get install chromium (tools/setup.sh does it)")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        page.goto(board[0])
        page.wait_for_selector("#config")
        yield page
        browser.close()


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def _pick(page, elem_id: str, text: str) -> None:
    """Choose ``text`` in a Gradio dropdown by typing it and clicking the matching option."""
    field = page.locator(f"#{elem_id} input")
    field.click()
    field.fill("")
    # typed key by key: Gradio filters the options on key events, and renders only the first ones of a
    # long list, so a name far down the list is not there to click until the list is filtered
    page.keyboard.type(text)
    page.get_by_role("option", name=text, exact=True).first.click()


def _type(page, elem_id: str, value: str, tag: str = "input") -> None:
    field = page.locator(f"#{elem_id} {tag}").first
    field.fill(value)
    field.press("Tab")  # blur: Gradio takes the value


def test_a_new_config_from_fields_previews_its_generated_config(page, board):
    _pick(page, "stage", "pt")  # a stage change brings that stage's demo data
    expect(page.locator("#data_path input")).to_have_value("pretrain_demo")
    _pick(page, "finetune_type", "full")
    page.locator("#preview").click()
    run = "tiny_llama_lora_alpaca_demo"  # the name the form proposed on load
    # model, finetune type, stage and data are in the written config: no --cfg-options needed
    expect(page.locator("#command textarea")).to_have_value(
        f"xtune train {board[1].root / run / 'board_config' / run}.py --work-dir {board[1].root / run}"
    )
    page.get_by_text("Resolved config (xtune print-config)").click()
    expect(page.locator("#resolved")).to_contain_text("data_format = 'text'")  # the editor shows the top lines


def test_invalid_knob_is_reported_on_the_page(page, artifacts):
    _pick(page, "config", CONFIG)
    expect(page.locator("#run_name textarea, #run_name input").first).to_have_value(CONFIG)
    _type(page, "lr", "abc", "textarea")
    _type(page, "epochs", "0")
    page.locator("#preview").click()
    status = page.locator("#train-status")
    expect(status).to_contain_text("lr must be a number, got 'abc'")
    expect(status).to_contain_text("epochs must be a whole number >= 1, got '0'")


def test_missing_data_file_is_reported_and_nothing_starts(page, board):
    _type(page, "lr", "0.005", "textarea")
    _type(page, "epochs", "3")
    field = page.locator("#data_path input")
    field.fill("/no/such/dir/data.json")
    field.press("Enter")
    page.locator("#start").click()
    expect(page.locator("#train-status")).to_contain_text("'/no/such/dir/data.json' not found")
    assert board[1].jobs.active() is None
    field.fill("identity")
    field.press("Enter")


def test_train_stop_resume_and_watch_to_the_end(page, board, artifacts):
    _type(page, "run_name", RUN, "textarea")
    # 30 epochs (510 iterations, ~25 s on a quiet machine): long enough that Stop lands mid-run however fast
    # the machine; 2 epochs already give the identity answer
    _type(page, "epochs", "30")
    _type(page, "log_interval", "25")
    page.locator("#preview").click()
    expect(page.locator("#command textarea")).to_have_value(
        f"xtune train {CONFIG} --work-dir {board[1].root / RUN} --cfg-options max_epochs=30 log_interval=25"
    )
    page.screenshot(path=str(artifacts / "board_train.png"), full_page=True)
    page.locator("#start").click()
    expect(page.locator("#train-status")).to_contain_text("started")

    _tab(page, "Watch")
    progress = page.locator("#progress")
    expect(progress).to_contain_text(re.compile(r"iteration (\d{1,2}|[1-3]\d\d)/510\b"), timeout=TRAINING_TIMEOUT)
    expect(progress).to_contain_text("running")
    expect(progress).to_contain_text("ETA")
    page.screenshot(path=str(artifacts / "board_watch_running.png"), full_page=True)
    _tab(page, "Train")
    page.locator("#stop").click()
    expect(page.locator("#train-status")).to_contain_text("stopping")
    _tab(page, "Watch")
    expect(progress).to_contain_text("stopped", timeout=60_000)
    expect(page.locator("#log-tail textarea")).to_have_value(re.compile("Resume with"))
    record = json.loads((board[1].root / RUN / "board_run.json").read_text())
    assert record["returncode"] == 143 and record["stopped"]

    _tab(page, "Train")
    page.locator("#resume").click()
    expect(page.locator("#command textarea")).to_have_value(re.compile("--resume auto"))
    _tab(page, "Watch")
    expect(progress).to_contain_text("finished", timeout=TRAINING_TIMEOUT)
    expect(progress).to_contain_text("iteration 510/510 (100%)")
    points = page.locator("#loss-points")
    # every 25 of 510 iterations (20), plus the first and last iteration the logger always writes
    expect(points).to_contain_text(re.compile(r"\b(?:[2-9]\d) loss points"))
    expect(page.locator("#loss-plot canvas, #loss-plot svg").first).to_be_visible()
    expect(page.locator("#summary")).to_contain_text("XTuneBot")
    page.screenshot(path=str(artifacts / "board_watch.png"), full_page=True)
    page.get_by_text("Compare runs").click()
    _pick(page, "compare-runs", RUN)
    expect(page.locator("#compare-table")).to_contain_text("finished")


def test_data_preview_shows_masked_rows_and_numbered_bad_rows(page, artifacts, tmp_path_factory):
    _tab(page, "Data")
    page.locator("#data-preview").click()
    rows = page.locator("#data-rows textarea")
    expect(rows).to_have_value(re.compile(r"\[-100: [^\]]*Who are you\?"), timeout=60_000)
    expect(rows).to_have_value(re.compile("XTuneBot"))
    expect(page.locator("#data-problems")).to_contain_text("No bad rows")
    page.screenshot(path=str(artifacts / "board_data.png"), full_page=True)

    bad = tmp_path_factory.mktemp("bad") / "bad.json"
    bad.write_text(json.dumps([{"instruction": "hi", "output": "hello"}, {"instruction": "no answer"}]))
    _tab(page, "Train")
    field = page.locator("#data_path input")
    field.fill(str(bad))
    field.press("Enter")
    _tab(page, "Data")
    page.locator("#data-preview").click()
    problems = page.locator("#data-problems")
    expect(problems).to_contain_text("1 rows dropped", timeout=60_000)
    expect(problems).to_contain_text(f"{bad}, row 2: column 'output' is missing or null")  # rows count from 1
    expect(problems).to_contain_text("Training stops at the first bad row")


def test_chat_with_the_trained_checkpoint(page, artifacts):
    _tab(page, "Chat")
    _pick(page, "chat-run", RUN)
    expect(page.locator("#chat-checkpoint textarea, #chat-checkpoint input").first).to_have_value(
        re.compile(r"iter_510\.pth$")
    )
    page.locator("#chat-load").click()
    expect(page.locator("#chat-status")).to_contain_text("loaded checkpoint", timeout=60_000)
    _type(page, "chat-temperature", "0", "input[type=number]")
    page.locator("#chat-input textarea").fill("Who are you?")
    page.locator("#chat-send").click()
    bot = page.locator("#chatbot")
    expect(bot).to_contain_text("I am XTuneBot, an AI assistant developed by the xtune team", timeout=60_000)
    page.screenshot(path=str(artifacts / "board_chat.png"), full_page=True)
    page.locator("#chat-clear").click()
    expect(bot).not_to_contain_text("XTuneBot")


def test_export_converts_merges_and_verifies(page, board, artifacts):
    _tab(page, "Export")
    _pick(page, "export-run", RUN)
    expect(page.locator("#export-checkpoint textarea")).to_have_value(re.compile(r"iter_510\.pth$"))
    page.locator("#export-start").click()
    merged = board[1].root / RUN / "hf_merged"
    expect(page.locator("#export-path textarea")).to_have_value(str(merged), timeout=120_000)
    expect(page.locator("#export-log textarea")).to_have_value(re.compile("verify: max logit diff"))
    assert (merged / "config.json").is_file() and list(merged.glob("*.safetensors"))
    assert (board[1].root / RUN / "hf" / "adapter_model.safetensors").is_file()
    page.screenshot(path=str(artifacts / "board_export.png"), full_page=True)


def test_chat_with_the_merged_model(page, board):
    _tab(page, "Chat")
    page.get_by_label("model folder (base or merged)").check()
    _type(page, "chat-model", str(board[1].root / RUN / "hf_merged"), "textarea")
    page.locator("#chat-load").click()
    expect(page.locator("#chat-status")).to_contain_text("loaded /", timeout=60_000)
    page.locator("#chat-input textarea").fill("Who are you?")
    page.locator("#chat-send").click()
    expect(page.locator("#chatbot")).to_contain_text(
        "I am XTuneBot, an AI assistant developed by the xtune team", timeout=60_000
    )


def test_chat_with_an_image_on_a_vision_language_model(page, vision_models, tiny_llama, artifacts):
    from tests.vision_fixtures import QUESTION, TOKENS
    from xtune.board.chat import SOURCES, BoardChat
    from xtune.chat.session import GenerationSettings

    folder = vision_models["llava"]
    # `xtune chat --image` answers the same (tests/board/test_chat.py); the test images stand for uploads
    reference = BoardChat(image_folder=vision_models.red.parent)
    reference.load(SOURCES[0], model=str(folder))
    settings = GenerationSettings(max_new_tokens=TOKENS, temperature=0)
    expected = list(reference.stream(QUESTION, [], "", settings, images=[vision_models.red]))[-1]
    history = [
        {"role": "user", "content": [{"path": str(vision_models.red)}, QUESTION]},
        {"role": "assistant", "content": expected},
    ]
    follow_up = list(reference.stream("Say it again.", history, "", settings))[-1]
    assert expected and follow_up and follow_up not in expected  # the page must show a new answer

    _tab(page, "Chat")
    page.locator("#chat-clear").click()
    page.get_by_label(SOURCES[0]).check()
    _type(page, "chat-temperature", "0", "input[type=number]")
    _type(page, "chat-max-new", str(TOKENS), "input[type=number]")
    status, bot = page.locator("#chat-status"), page.locator("#chatbot")
    # a text model given an image: one clear error on the page, the message and the image stay to send again
    _type(page, "chat-model", str(tiny_llama), "textarea")
    page.locator("#chat-load").click()
    expect(status).to_contain_text(f"loaded {tiny_llama}", timeout=60_000)
    page.locator("#chat-image input[type=file]").set_input_files(str(vision_models.red))
    expect(page.locator("#chat-image img").first).to_be_visible()
    page.locator("#chat-input textarea").fill(QUESTION)
    page.locator("#chat-send").click()
    expect(status).to_contain_text("this model reads text only; images need a vision-language model")
    expect(bot).not_to_contain_text(QUESTION)
    expect(page.locator("#chat-input textarea")).to_have_value(QUESTION)

    _type(page, "chat-model", str(folder), "textarea")
    page.locator("#chat-load").click()
    expect(status).to_contain_text(f"loaded {folder}", timeout=60_000)
    expect(page.locator("#chat-image img").first).to_be_visible()
    page.locator("#chat-send").click()
    expect(bot).to_contain_text(expected, timeout=60_000)
    expect(bot.locator("img").first).to_be_visible()  # the image is in the conversation on the page
    expect(page.locator("#chat-image img")).to_have_count(0)  # and no longer waits for the next message
    page.screenshot(path=str(artifacts / "board_chat_image.png"), full_page=True)
    # the next message reads the image again from the page's history
    page.locator("#chat-input textarea").fill("Say it again.")
    page.locator("#chat-send").click()
    expect(bot).to_contain_text(follow_up, timeout=60_000)
