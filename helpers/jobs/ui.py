"""The training page: text-generation-webui's "Train LoRA" tab, on the fine-tuning jobs API.

A Gradio page that does what notebook 08 does by hand, through the same OpenAI routes and the
unmodified ``openai`` client (over HTTP, with the server's API key, as 06's chat page):
pick the course data or upload a file (alpaca rows are converted to chat ``messages`` before
the upload, and the page says so), set the hyperparameters (that tab's defaults and
explanations), start a job, watch its progress and loss from the job's events, cancel it,
then ask the base and the fine-tuned model the same question side by side.

    >>> from helpers.jobs.ui import train_ui
    >>> from helpers.serve.ui import launch_ui
    >>> demo = train_ui(h.url, h.api_key)  # h = start_server(..., jobs=JobService(...))
    >>> url = launch_ui(demo)  # returns at once; demo.close() stops the page

LoRA rank, alpha, target modules and the scheduler are not OpenAI fields: they travel as extra
keys of ``method.supervised.hyperparameters`` (:data:`helpers.jobs.validate.LORA_LIMITS`),
which this server bounds and passes to the trainer and OpenAI's hosted API would refuse.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helpers.data.io import detect_format, to_messages
from helpers.data.validation import DataError
from helpers.jobs.store import FINAL
from helpers.profiles import Profile, active_profile

if TYPE_CHECKING:
    import gradio as gr

COURSE_DATA = "课程数据 course data (train split, chat)"
UPLOAD = "上传文件 upload (alpaca / chat / prompt-completion)"
TARGETS = {"q_proj, v_proj": ["q_proj", "v_proj"], "all-linear": "all-linear"}
SCHEDULERS = ("linear", "constant", "cosine", "cosine_with_restarts", "polynomial")
# text-generation-webui's Train LoRA defaults: rank 32, alpha 64 (2x rank), lr 3e-4, 3 epochs,
# linear schedule, q_proj/v_proj only
DEFAULTS = {"rank": 32, "alpha": 64, "lr": 3e-4, "epochs": 3, "scheduler": "linear"}


def read_rows(path: str | Path) -> tuple[list[dict[str, Any]], str]:
    """Rows of a JSONL (or JSON array) file as the API takes them, and a note on what was done.

    Chat ``messages`` and ``prompt``/``completion`` rows go up as they are (the server checks
    them); alpaca and sharegpt rows become ``{"messages": [...]}`` first, line by line.
    """
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        records = json.loads(text)
    else:
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"line {number}: not JSON ({exc.msg}); one object per line"
                ) from None
    rows, converted = [], {}
    for number, record in enumerate(records, 1):
        fmt = detect_format(record) if isinstance(record, dict) else None
        if fmt in ("openai_chat", "prompt_completion"):
            rows.append(record)
            continue
        try:
            rows.append({"messages": to_messages(record, fmt)})
        except DataError as err:
            raise ValueError(str(err.located(None, number))) from None
        converted[fmt] = converted.get(fmt, 0) + 1
    note = ", ".join(f"{n} {fmt} rows converted to chat messages" for fmt, n in converted.items())
    return rows, note or "uploaded as is (chat / prompt-completion)"


def failure(exc: Exception, model: str | None = None) -> str:
    """A failed call as one line: the server's OpenAI-shaped message says what to do."""
    import openai

    where = f"**{model}**: " if model else ""
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        return f"⚠️ {where}HTTP {exc.status_code}: {body.get('message') or exc.message}"
    if isinstance(exc, openai.APIConnectionError):
        return f"⚠️ {where}cannot reach the server: is it still running?"
    return f"⚠️ {where}{exc}"


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def job_hyperparameters(
    profile: Profile,
    epochs: int,
    batch: int,
    lr: float,
    rank: int,
    alpha: int,
    target: str,
    scheduler: str,
) -> dict[str, Any]:
    """``method.supervised.hyperparameters``: OpenAI's three keys plus this server's LoRA ones."""
    return {
        "n_epochs": int(epochs),
        "batch_size": int(batch),
        "learning_rate_multiplier": lr / profile.learning_rate,  # OpenAI sets lr relatively
        "lora_rank": int(rank),
        "lora_alpha": int(alpha),
        "lora_target_modules": TARGETS[target],
        "lr_scheduler_type": scheduler,
    }


def train_ui(
    base_url: str,
    api_key: str | None,
    *,
    base_model: str = "base",
    profile: Profile | None = None,
    course_rows: int = 64,
    max_tokens: int = 64,
) -> gr.Blocks:
    """The page; ``base_model`` is the server's name for the untuned model (06: ``"base"``)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline classrooms: no telemetry
    import gradio as gr
    import openai
    import pandas as pd

    from helpers.data import load_split
    from helpers.jobs.progress import loss_curve

    profile = profile or active_profile()
    client = openai.OpenAI(base_url=base_url, api_key=api_key or "no-key", max_retries=0)

    def start(source, upload, n_rows, epochs, batch, lr, rank, alpha, target, scheduler, suffix):
        """Upload the data, create the job; (job id, status line, timer on)."""
        try:
            if source == COURSE_DATA:
                rows = [{"messages": r["messages"]} for r in load_split("train")[: int(n_rows)]]
                note = f"{len(rows)} rows of the course's train split"
            elif upload is None:
                return None, "⚠️ Choose a file to upload first.", gr.Timer(active=False)
            else:
                rows, note = read_rows(upload)
            name = Path(upload).name if source == UPLOAD else "course-train.jsonl"
            file = client.files.create(file=(name, _jsonl(rows)), purpose="fine-tune")
            hyper = job_hyperparameters(profile, epochs, batch, lr, rank, alpha, target, scheduler)
            job = client.fine_tuning.jobs.create(
                model=profile.model_id,
                training_file=file.id,
                method={"type": "supervised", "supervised": {"hyperparameters": hyper}},
                suffix=suffix or None,
            )
        except (ValueError, openai.APIError) as exc:
            return None, failure(exc), gr.Timer(active=False)
        return job.id, f"`{file.id}`: {note}. Job `{job.id}`: {job.status}", gr.Timer(active=True)

    def poll(job_id):
        """(status line, loss plot data, fine-tuned model name, timer still on?)."""
        if not job_id:
            return gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=False)
        try:
            job = client.fine_tuning.jobs.retrieve(job_id)
            curve = loss_curve(client, job_id)
            events = client.fine_tuning.jobs.list_events(job_id, limit=20).data  # newest first
        except openai.APIError as exc:  # the server went away: say so, stop polling
            return failure(exc), gr.skip(), gr.skip(), gr.Timer(active=False)
        steps = [e.data for e in events if e.type == "metrics" and e.data]
        done = f"step {steps[0]['step']}/{steps[0]['total_steps']}" if steps else "no step yet"
        loss = f", loss {curve[-1][1]:.4f}" if curve else ""
        error = f": {job.error.message}" if job.error and job.error.message else ""
        line = f"Job `{job_id}`: **{job.status}**{error} · {done}{loss}"
        if job.fine_tuned_model:
            line += f" · model `{job.fine_tuned_model}`"
        plot = pd.DataFrame(curve, columns=["step", "loss"])
        return line, plot, job.fine_tuned_model or "", gr.Timer(active=job.status not in FINAL)

    def cancel(job_id):
        if not job_id:
            return "⚠️ No job started on this page."
        try:
            return f"Job `{job_id}`: {client.fine_tuning.jobs.cancel(job_id).status}"
        except openai.APIError as exc:
            return failure(exc)

    def ask(prompt, tuned):
        """The same greedy question to the base and the fine-tuned model."""
        if not tuned or not (prompt or "").strip():
            message = "⚠️ " + (
                "Type a prompt first." if tuned else "No fine-tuned model yet: wait for success."
            )
            return message, message
        answers = []
        for model in (base_model, tuned):
            try:
                reply = client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=max_tokens,
                    temperature=0,
                )
                answers.append(reply.choices[0].message.content or "(empty answer)")
            except openai.APIError as exc:
                answers.append(failure(exc, model))
        return tuple(answers)

    with gr.Blocks(title="Train LoRA", analytics_enabled=False) as demo:
        gr.Markdown(f"## 训练 LoRA · Train LoRA\nServer `{base_url}` · base `{profile.model_id}`")
        job_id, tuned = gr.State(None), gr.State("")
        with gr.Row():
            source = gr.Radio(
                [COURSE_DATA, UPLOAD], value=COURSE_DATA, label="数据 dataset", elem_id="source"
            )
            n_rows = gr.Number(
                course_rows, precision=0, label="course rows", minimum=10, elem_id="course-rows"
            )
            upload = gr.File(
                label="JSONL / JSON file",
                file_types=[".jsonl", ".json"],
                type="filepath",
                elem_id="dataset-file",
            )
        gr.Markdown("Alpaca (`instruction`/`input`/`output`) 行会先转换成 chat `messages` 再上传。")
        with gr.Row():
            target = gr.Radio(
                list(TARGETS),
                value="q_proj, v_proj",
                label="target modules",
                elem_id="target",
                info="q_proj, v_proj: the classic LoRA choice, smallest; all-linear "
                "trains every linear layer: stronger, slower",
            )
            rank = gr.Slider(
                1,
                256,
                value=DEFAULTS["rank"],
                step=1,
                label="LoRA rank",
                elem_id="rank",
                info="adapter size: more capacity and memory; 8-64 is typical",
            )
            alpha = gr.Slider(
                1,
                1024,
                value=DEFAULTS["alpha"],
                step=1,
                label="LoRA alpha",
                elem_id="alpha",
                info="update scale, alpha/rank; usually 2x rank",
            )
        with gr.Row():
            lr = gr.Number(
                DEFAULTS["lr"],
                label="learning rate",
                elem_id="lr",
                info=f"step size; sent as a multiplier of {profile.learning_rate:g}",
            )
            epochs = gr.Number(
                DEFAULTS["epochs"],
                precision=0,
                minimum=1,
                label="epochs",
                elem_id="epochs",
                info="passes over the data; more risks memorising it",
            )
            batch = gr.Number(
                profile.per_device_batch_size * profile.gradient_accumulation_steps,
                precision=0,
                minimum=1,
                label="batch size",
                elem_id="batch",
                info="examples per optimizer step",
            )
            scheduler = gr.Dropdown(
                list(SCHEDULERS),
                value=DEFAULTS["scheduler"],
                label="LR scheduler",
                elem_id="scheduler",
                info="how lr falls over the run",
            )
            suffix = gr.Textbox(
                "", label="suffix", info="part of the model's ft: name", elem_id="suffix"
            )
        rank.change(lambda r: 2 * r, rank, alpha, queue=False)  # alpha follows rank, as 2x
        with gr.Row():
            start_button = gr.Button("开始训练 Start", variant="primary", elem_id="start")
            cancel_button = gr.Button("取消 Cancel", elem_id="cancel")
        status = gr.Markdown(elem_id="status")
        plot = gr.LinePlot(x="step", y="loss", title="training loss", elem_id="loss-plot")
        timer = gr.Timer(1.0, active=False)
        gr.Markdown("### 对比 base vs fine-tuned (greedy)")
        prompt = gr.Textbox(label="prompt", elem_id="compare-prompt")
        ask_button = gr.Button("同时提问 Ask both", elem_id="ask")
        with gr.Row():
            base_answer = gr.Textbox(label=f"base: {base_model}", elem_id="answer-base")
            tuned_answer = gr.Textbox(label="fine-tuned", elem_id="answer-tuned")
        inputs = [source, upload, n_rows, epochs, batch, lr, rank, alpha, target, scheduler, suffix]
        start_button.click(start, inputs, [job_id, status, timer])
        timer.tick(poll, job_id, [status, plot, tuned, timer])
        cancel_button.click(cancel, job_id, status)
        ask_button.click(ask, [prompt, tuned], [base_answer, tuned_answer])
    return demo
