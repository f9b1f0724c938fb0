"""Notebook 08's fine-tuning API, driven by the unmodified ``openai`` client (tiny profile).

Every server listens on 127.0.0.1 with port=0; training runs ``helpers.train_cli`` on the tiny
model in a child process, a few steps per job.
"""

import json
import os
import time

import httpx
import openai
import pytest

from helpers.data import load_split
from helpers.jobs import JobService
from helpers.jobs.store import Store
from helpers.jobs.worker import training_niceness
from helpers.monitor.registry import AdapterRegistry
from helpers.profiles import get_profile
from helpers.serve import start_server
from helpers.serve.peft_backend import PeftBackend

KEY = "jobs-key"
TINY = get_profile("tiny")
ROWS = [{"messages": r["messages"]} for r in load_split("train")[:12]]
SKIPPED_TURN = [  # OpenAI's weight 0: shown as context, not trained on
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "a reply not to learn", "weight": 0},
]


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def backend():
    from helpers.models import load_model

    model, tokenizer = load_model(TINY)
    return PeftBackend(model.eval(), tokenizer)


def serve(root, backend, **service):
    registry = AdapterRegistry(root / "registry.json")
    jobs = JobService(root, registry, TINY, **service)
    handle = start_server(
        {"base": backend.base()},
        port=0,
        api_key=KEY,
        registry=registry,
        load_version=backend.load_version,
        jobs=jobs,
    )
    return handle, openai.OpenAI(base_url=handle.url, api_key=KEY, max_retries=0)


def wait(client, job_id, done, timeout_s=180):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if done(job, client):
            return job
        time.sleep(0.3)
    raise AssertionError(f"{job_id} stuck in {job.status}: {job.error}")


def has_checkpoint(job, client):
    return bool(client.fine_tuning.jobs.checkpoints.list(job.id).data)


@pytest.fixture
def server(tmp_path, backend):
    handle, client = serve(tmp_path, backend, save_steps=2)
    yield handle, client
    handle.stop()


def bad(call, status, *words):
    with pytest.raises(openai.APIStatusError) as info:
        call()
    error = info.value.body
    assert info.value.status_code == status, error
    for word in words:
        assert word in error["message"] or word == error.get("param"), error
    return error


def test_bad_files_and_requests_are_refused_with_the_line_and_the_fix(server):
    handle, client = server
    upload = client.files.create
    chat = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    cases = [
        (b'{"messages": [\n', "line 1", "malformed_json"),
        (jsonl([chat, {"instruction": "x", "output": "y"}]), "line 2", "export_openai_chat"),
        (jsonl([chat, {"messages": chat["messages"][::-1]}]), "line 2", "roles_out_of_order"),
        (jsonl([{"messages": [*chat["messages"][:1], {**chat["messages"][1], "weight": 2}]}]),
         "line 1", "messages[1].weight"),
        (jsonl([{"messages": [{**chat["messages"][0], "weight": 1}, chat["messages"][1]]}]),
         "only assistant turns"),
        (jsonl([{"messages": [chat["messages"][0], {**chat["messages"][1], "weight": 0}]}]),
         "nothing in this example is trained"),
        (jsonl([{"messages": [chat["messages"][0], {**chat["messages"][1], "weight": "1"}]}]),
         "messages[1].weight"),
        (jsonl([{"messages": [chat["messages"][0], {**chat["messages"][1], "weight": True}]}]),
         "messages[1].weight"),
        (jsonl([chat]) + b"\n" + jsonl([chat]), "line 2", "blank line"),
        ("中文".encode("gbk"), "UTF-8"),
        (b"", "no examples"),
    ]  # fmt: skip
    for content, *words in cases:
        error = bad(lambda c=content: upload(file=("d.jsonl", c), purpose="fine-tune"), 400, *words)
        assert error["param"] == "file" and error["type"] == "invalid_request_error"
    assert client.files.list().data == []  # nothing was stored
    bad(lambda: upload(file=("d.jsonl", jsonl([chat])), purpose="assistants"), 400, "purpose")
    two = [("file", ("a.jsonl", jsonl([chat]))), ("file", ("b.jsonl", jsonl([chat])))]
    auth = {"Authorization": f"Bearer {KEY}"}
    answer = httpx.post(f"{handle.url}/files", files=two, data={"purpose": "fine-tune"},
                        headers=auth, timeout=10)  # fmt: skip
    assert answer.status_code == 400 and "one file" in answer.json()["error"]["message"]
    small = upload(file=("few.jsonl", jsonl([chat] * 3)), purpose="fine-tune")
    good = upload(file=("ok.jsonl", jsonl(ROWS)), purpose="fine-tune")
    create = client.fine_tuning.jobs.create
    bad(lambda: create(model=TINY.model_id, training_file=small.id), 400, "3 examples")
    bad(lambda: create(model="gpt-4o-mini", training_file=good.id), 404, "model")
    bad(lambda: create(model=TINY.model_id, training_file="../../etc/passwd"), 404, "file")
    hp = {"n_epochs": 500}
    bad(lambda: create(model=TINY.model_id, training_file=good.id, hyperparameters=hp), 400,
        "out of range")  # fmt: skip
    dpo = {"type": "dpo"}
    bad(lambda: create(model=TINY.model_id, training_file=good.id, method=dpo), 400, "method.type")
    bad(lambda: create(model=TINY.model_id, training_file=good.id, suffix="a b"), 400, "suffix")
    bad(lambda: create(model=TINY.model_id, training_file=good.id, seed=-1), 400, "seed")
    bad(lambda: client.fine_tuning.jobs.list(limit=0), 400, "limit")
    wrong_key = openai.OpenAI(base_url=handle.url, api_key="wrong", max_retries=0)
    bad(lambda: wrong_key.files.list(), 401, "API key")


def test_upload_limit_and_quota(tmp_path, backend):
    limit = len(jsonl(ROWS[:10]))
    handle, client = serve(tmp_path, backend, max_upload_bytes=limit, max_active_jobs=0)
    try:
        big = jsonl(ROWS[:11])
        bad(lambda: client.files.create(file=("big.jsonl", big), purpose="fine-tune"), 413)
        file = client.files.create(file=("ok.jsonl", jsonl(ROWS[:10])), purpose="fine-tune")
        assert client.files.retrieve(file.id).bytes == len(jsonl(ROWS[:10]))
        assert client.files.content(file.id).read() == jsonl(ROWS[:10])
        job = lambda: client.fine_tuning.jobs.create(model=TINY.model_id, training_file=file.id)  # noqa: E731
        bad(job, 429, "unfinished jobs")
        assert client.files.delete(file.id).deleted
        bad(lambda: client.files.retrieve(file.id), 404)
    finally:
        handle.stop()


def test_lifecycle_queue_cancel_restart_and_the_model_answers(tmp_path, backend):
    handle, client = serve(tmp_path, backend, save_steps=2)
    prompt_completion = [{"prompt": "q", "completion": "a"}] * 10
    try:
        weighted = [{"messages": ROWS[0]["messages"] + SKIPPED_TURN}, *ROWS[1:]]
        train = client.files.create(file=("train.jsonl", jsonl(weighted)), purpose="fine-tune")
        other = client.files.create(
            file=("pc.jsonl", jsonl(prompt_completion)), purpose="fine-tune"
        )
        page = client.files.list(limit=1)
        assert [f.id for f in page.data] == [other.id] and page.has_more
        assert [f.id for f in client.files.list(limit=1, after=other.id).data] == [train.id]
        hyper = {"n_epochs": 4, "batch_size": 4}
        method = {"type": "supervised", "supervised": {"hyperparameters": hyper}}
        job = client.fine_tuning.jobs.create(
            model=TINY.model_id, training_file=train.id, method=method, suffix="demo", seed=7,
            metadata={"run": "test"},
        )  # fmt: skip
        assert job.status == "validating_files" and job.hyperparameters.n_epochs == 4
        queued = client.fine_tuning.jobs.create(model=TINY.model_id, training_file=other.id)
        assert [j.id for j in client.fine_tuning.jobs.list(limit=1).data] == [queued.id]
        later = client.fine_tuning.jobs.list(limit=1, after=queued.id)
        assert [j.id for j in later.data] == [job.id] and not later.has_more
        wait(client, job.id, has_checkpoint)  # 12 rows / batch 4 = 3 steps per epoch
        assert client.fine_tuning.jobs.retrieve(queued.id).status == "queued"  # one at a time
        assert client.fine_tuning.jobs.cancel(queued.id).status == "cancelled"
        bad(lambda: client.fine_tuning.jobs.cancel(queued.id), 400, "already cancelled")
    finally:
        handle.stop()  # mid-run: the job pauses at a checkpoint
    assert any("paused at step" in e.message for e in _events(tmp_path, job.id))
    handle, client = serve(tmp_path, backend, save_steps=2)
    try:
        done = wait(client, job.id, lambda j, c: j.status in ("succeeded", "failed"))
        assert done.status == "succeeded", done.error
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
        assert any("resuming from its checkpoint at step" in m for m in messages), messages
        assert sum("Fine-tuning job started" in m for m in messages) == 2  # resumed, not rerun
        losses = [e.data["train_loss"] for e in client.fine_tuning.jobs.list_events(job.id)
                  if e.type == "metrics"]  # fmt: skip
        assert losses and all(x > 0 for x in losses)
        assert done.fine_tuned_model == f"ft:tiny-qwen2:course:demo:{job.id[6:14]}"
        assert done.trained_tokens > 0 and done.finished_at >= done.created_at
        ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
        steps = [c.step_number for c in ckpts]  # every 2 steps, and where the stop paused it
        # the trainer keeps its last 3 checkpoints: one can go before the worker copies it
        assert steps == sorted(set(steps), reverse=True) and steps[0] == 12 and len(steps) >= 4
        assert ckpts[0].metrics.train_loss > 0
        served = {m.id for m in client.models.list()}
        assert done.fine_tuned_model in served
        hi = [{"role": "user", "content": "你好"}]
        for name in (done.fine_tuned_model, ckpts[-1].fine_tuned_model_checkpoint, "base"):
            answer = client.chat.completions.create(model=name, messages=hi, max_tokens=4,
                                                    temperature=0)  # fmt: skip
            assert answer.model == name and answer.choices[0].message.content
        assert len(client.fine_tuning.jobs.list().data) == 2  # nothing lost, nothing added
    finally:
        handle.stop()


def test_cancel_stops_a_running_job_and_keeps_its_checkpoint(server, tmp_path):
    handle, client = server
    train = client.files.create(file=("train.jsonl", jsonl(ROWS)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=TINY.model_id, training_file=train.id, hyperparameters={"n_epochs": 20}
    )
    wait(client, job.id, has_checkpoint)
    pid = Store(tmp_path / "jobs.sqlite3").get("jobs", job.id)["pid"]  # training yields the CPU
    assert (
        os.getpriority(os.PRIO_PROCESS, pid)
        == training_niceness()
        > os.getpriority(os.PRIO_PROCESS, 0)
    )
    assert client.fine_tuning.jobs.cancel(job.id).id == job.id
    start = time.monotonic()
    done = wait(client, job.id, lambda j, c: j.status != "running", timeout_s=60)
    assert done.status == "cancelled" and time.monotonic() - start < 30
    last = client.fine_tuning.jobs.list_events(job.id, limit=1).data[0].message
    assert "checkpoint at step" in last and "kept" in last
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data


def _events(root, job_id):
    from types import SimpleNamespace

    from helpers.jobs.store import Store

    rows, _ = Store(root / "jobs.sqlite3").page("events", 100, job_id=job_id)
    return [SimpleNamespace(**r) for r in rows]


SERVE_SCRIPT = """
import time
from pathlib import Path
from tests.test_jobs import TINY, serve, backend_for
handle, _ = serve(Path({root!r}), backend_for(), save_steps=2)
print(handle.url, flush=True)
time.sleep(600)
"""


def backend_for():
    from helpers.models import load_model

    model, tokenizer = load_model(TINY)
    return PeftBackend(model.eval(), tokenizer)


def test_a_killed_server_loses_no_job_and_runs_none_twice(tmp_path, backend):
    """kill -9 of the server mid-run: its training child lives on; the next server stops that
    child (one process per job), then resumes the job from its last checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    repo = str(Path(__file__).resolve().parent.parent)
    script = SERVE_SCRIPT.format(root=str(tmp_path))  # run from the repository root
    crashed = subprocess.Popen([sys.executable, "-c", script], cwd=repo, stdout=subprocess.PIPE)
    try:
        url = crashed.stdout.readline().decode().strip()
        client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)
        train = client.files.create(file=("train.jsonl", jsonl(ROWS)), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model=TINY.model_id, training_file=train.id, hyperparameters={"n_epochs": 4}
        )
        wait(client, job.id, has_checkpoint)
    finally:
        crashed.send_signal(signal.SIGKILL)
        crashed.wait()
    from helpers.jobs.store import Store

    orphan = Store(tmp_path / "jobs.sqlite3").get("jobs", job.id)["pid"]
    os.kill(orphan, 0)  # the training child outlived its server
    handle, client = serve(tmp_path, backend, save_steps=2)
    try:
        done = wait(client, job.id, lambda j, c: j.status in ("succeeded", "failed"))
        assert done.status == "succeeded", done.error
        with pytest.raises(ProcessLookupError):
            os.kill(orphan, 0)
        events = list(client.fine_tuning.jobs.list_events(job.id))
        messages = [e.message for e in events]
        assert any("resuming from its checkpoint at step" in m for m in messages), messages
        logged = [e.data["step"] for e in events if e.type == "metrics"]
        assert len(logged) == len(set(logged)), "a step's event was imported twice"
        steps = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id)]
        assert len(steps) == len(set(steps)) and max(steps) == 12
        assert [j.id for j in client.fine_tuning.jobs.list()] == [job.id]
    finally:
        handle.stop()
