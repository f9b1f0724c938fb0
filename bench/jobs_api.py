"""A fine-tuning job through the jobs API vs the same training run directly (notebook 08).

    python bench/jobs_api.py --profile cpu-demo                  # 03's default size: 320 rows
    python bench/jobs_api.py --profile tiny --rows 64 --answers 4

Side by side in one run, so the machine is the same:

1. ``python -m helpers.train_cli`` on the uploaded file, as the worker would start it (the
   training itself, no server);
2. the same file through the API with the unmodified ``openai`` client (upload, create with
   ``auto`` hyperparameters, wait for ``succeeded``), while a second thread times
   create / list / retrieve requests against the busy server (each extra job it creates is
   cancelled at once, so only the measured job trains);
3. the fine-tuned model answering held-out questions through the same server by its ``ft:``
   name, scored as in 04 (JSON validity, field accuracy).

Target (issue 15): the job within 10% of the direct run, API p95 < 100 ms while it trains.
Prints one JSON object (command, profile, machine, date and the figures); ``--out`` saves it.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import openai

from helpers.cpu import cpu_model
from helpers.data import export_openai_chat, load_split, parse_answer, score_answers
from helpers.jobs import JobService, worker
from helpers.monitor.registry import AdapterRegistry
from helpers.profiles import get_profile
from helpers.serve import start_server
from helpers.serve.loadtest import _percentile
from helpers.serve.peft_backend import PeftBackend


def time_api(client: openai.OpenAI, model: str, file_id: str, job_id: str, stop: threading.Event):
    """Latencies (s) of create (then cancel), list and retrieve while ``job_id`` trains."""
    seconds: dict[str, list[float]] = {"create": [], "list": [], "retrieve": []}
    while not stop.is_set():
        start = time.perf_counter()
        extra = client.fine_tuning.jobs.create(model=model, training_file=file_id)
        seconds["create"].append(time.perf_counter() - start)
        client.fine_tuning.jobs.cancel(extra.id)
        for name, call in (
            ("list", lambda: client.fine_tuning.jobs.list(limit=20)),
            ("retrieve", lambda: client.fine_tuning.jobs.retrieve(job_id)),
        ):
            start = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - start)
        stop.wait(0.5)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="cpu-demo")
    parser.add_argument("--rows", type=int, default=320, help="03's mix size: 40 steps of 8")
    parser.add_argument("--answers", type=int, default=10, help="held-out questions to score")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument(
        "--training-nice",
        type=int,
        default=worker.TRAINING_NICE,
        help="how much nicer the training child runs than the server (0: same priority)",
    )
    args = parser.parse_args()
    worker.TRAINING_NICE = args.training_nice
    profile = get_profile(args.profile)
    from helpers import models

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = [{"messages": profile.style_messages(r["messages"])} for r in load_split("train")]
        train = root / "train.jsonl"
        export_openai_chat(rows[: args.rows], train)

        # 1. the training run alone, the arguments the worker gives it for n_epochs=1
        started = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "helpers.train_cli", "--output-dir", str(root / "direct"),
             "--profile", profile.name, "--train-file", str(train), "--epochs", "1",
             "--no-checkpoints", "--set", "report_to=[]"],
            check=True, capture_output=True,
        )  # fmt: skip
        direct_s = time.monotonic() - started

        # 2. the same file through the API
        base, tokenizer = models.load_model(profile)
        backend = PeftBackend(base.eval(), tokenizer)
        registry = AdapterRegistry(root / "jobs" / "registry.json")
        key = secrets.token_urlsafe(16)
        server = start_server(
            {"base": backend.base()},
            port=0,
            api_key=key,
            registry=registry,
            load_version=backend.load_version,
            jobs=JobService(root / "jobs", registry, profile),
        )
        client = openai.OpenAI(base_url=server.url, api_key=key)
        started = time.monotonic()
        uploaded = client.files.create(file=train.open("rb"), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model=profile.model_id, training_file=uploaded.id)
        while client.fine_tuning.jobs.retrieve(job.id).status != "running":
            time.sleep(0.2)
        stop = threading.Event()
        timings: dict = {}
        timer = threading.Thread(
            target=lambda: timings.update(
                time_api(client, profile.model_id, uploaded.id, job.id, stop)
            )
        )
        timer.start()
        while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in (
            "succeeded",
            "failed",
            "cancelled",
        ):
            time.sleep(1)
        stop.set()
        timer.join()
        job_s = time.monotonic() - started
        if job.status != "succeeded":
            raise SystemExit(f"The job ended {job.status}: {job.error}")

        # 3. the result answers by its ft: name
        questions = load_split("test")[: args.answers]
        answers = []
        for q in questions:
            styled = profile.style_messages(q["messages"])
            messages = [m for m in styled if m["role"] != "assistant"]
            reply = client.chat.completions.create(
                model=job.fine_tuned_model,
                messages=messages,
                temperature=0,
                max_tokens=profile.max_new_tokens,
            )
            answers.append(reply.choices[0].message.content)
        references = [q["messages"][-1]["content"] for q in questions]
        server.stop()

    def ms(values: list[float], q: float) -> float:
        return round(1000 * _percentile(values, q), 1)

    result = {
        "command": "python " + " ".join(sys.argv),
        "profile": profile.name,
        "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "rows": args.rows,
        "training_nice": args.training_nice,
        "trained_tokens": job.trained_tokens,
        "direct_train_min": round(direct_s / 60, 2),
        "job_min": round(job_s / 60, 2),
        "job_overhead": round(job_s / direct_s - 1, 3),
        "api_ms": {
            name: {"n": len(v), "p50": ms(v, 0.5), "p95": ms(v, 0.95)}
            for name, v in timings.items()
        },
        "answers": score_answers(answers, references),
        "answers_parsed": sum(parse_answer(a) is not None for a in answers),
        "first_answer": answers[0],
    }
    text = json.dumps(result, ensure_ascii=False, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
