"""Notebook 08's training page in a real browser: upload, train, watch, compare (tiny profile).

Needs Debian's chromium and Playwright, as tests/test_serve_ui.py (skipped without them, failed
instead under COURSE_REQUIRE_BROWSER=1). One job of 3 steps on the tiny model.
"""

import json
import time

import pytest
from test_jobs import KEY, ROWS, TINY, serve
from test_serve_ui import _free_port, browser_or_skip

from helpers.jobs.ui import read_rows

ALPACA = [
    {
        "instruction": r["messages"][-2]["content"],
        "input": "",
        "output": r["messages"][-1]["content"],
    }
    for r in ROWS
]


def test_read_rows_converts_alpaca_and_keeps_chat(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(ALPACA[:2], ensure_ascii=False))
    rows, note = read_rows(path)
    assert note == "2 alpaca rows converted to chat messages"
    assert rows[0]["messages"][-1] == {"role": "assistant", "content": ALPACA[0]["output"]}
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps(ROWS[0], ensure_ascii=False) + "\n")
    assert read_rows(chat) == ([ROWS[0]], "uploaded as is (chat / prompt-completion)")
    chat.write_text(json.dumps({"instruction": "x"}) + "\n")
    with pytest.raises(ValueError, match="line 1"):
        read_rows(chat)


@pytest.fixture(scope="module")
def chromium():
    return browser_or_skip()


def _wait_text(page, selector: str, words: str, timeout_s: float = 50) -> str:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        text = page.locator(selector).inner_text()
        if words in text:
            return text
        time.sleep(0.2)
    raise AssertionError(f"{selector} never showed {words!r}; it shows {text!r}")


def test_one_job_from_upload_to_the_side_by_side_answer(chromium, tmp_path):
    from playwright.sync_api import sync_playwright

    from helpers.jobs.ui import train_ui
    from helpers.models import load_model
    from helpers.serve.peft_backend import PeftBackend
    from helpers.serve.ui import launch_ui

    model, tokenizer = load_model(TINY)
    handle, client = serve(tmp_path, PeftBackend(model.eval(), tokenizer))
    data = tmp_path / "alpaca.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ALPACA))
    demo = train_ui(handle.url, KEY, profile=TINY, max_tokens=8)
    try:
        url = launch_ui(demo, host="127.0.0.1", port=_free_port(), inline=False)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(url)
            page.get_by_label("上传文件 upload (alpaca / chat / prompt-completion)").check()
            page.locator("#dataset-file input[type=file]").set_input_files(str(data))
            page.locator("#epochs input").fill("1")
            rank = page.locator("#rank input[type=number]")
            rank.fill("4")
            rank.press("Enter")
            page.locator("#suffix textarea, #suffix input").first.fill("page")
            page.wait_for_function(  # alpha follows rank: 2x
                "() => document.querySelector('#alpha input[type=number]').value === '8'",
                timeout=10_000,
            )
            page.locator("#start").click()
            shown = _wait_text(page, "#status", "12 alpaca rows converted to chat messages", 20)
            assert "Job ftjob-" in shown  # the name in code style
            shown = _wait_text(page, "#status", "succeeded")
            job = client.fine_tuning.jobs.list().data[0]
            assert job.status == "succeeded" and job.hyperparameters.n_epochs == 1
            assert job.fine_tuned_model in shown and ":page:" in job.fine_tuned_model
            assert "step 3/3" in shown and "loss " in shown  # 12 rows, batch 4
            plot = page.locator("#loss-plot")
            assert plot.locator("canvas, svg").count() > 0  # the loss curve is drawn
            adapter = json.loads(
                (
                    tmp_path / "jobs" / job.id / "train" / "adapter" / "adapter_config.json"
                ).read_text()
            )
            assert (adapter["r"], adapter["lora_alpha"]) == (4, 8)
            assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]
            page.locator("#cancel").click()  # a finished job cannot be cancelled: said so
            _wait_text(page, "#status", "HTTP 400")
            page.locator("#compare-prompt textarea").fill("你好")
            page.locator("#ask").click()
            for elem_id in ("answer-base", "answer-tuned"):
                box = page.locator(f"#{elem_id} textarea")
                page.wait_for_function(
                    f"() => document.querySelector('#{elem_id} textarea').value.length > 0",
                    timeout=20_000,
                )
                assert not box.input_value().startswith("⚠️"), box.input_value()
            browser.close()
    finally:
        demo.close()
        handle.stop()
