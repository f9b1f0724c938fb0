"""The worker: one fine-tuning job at a time, trained by ``helpers.train_cli`` in a child process.

A thread of the server walks each job through ``validating_files -> queued -> running`` and
on to ``succeeded``, ``failed`` or ``cancelled``. Training runs in its own process (a crash there
cannot take the server down, and its memory is freed when it ends); the thread reads the
child's events file (losses, checkpoints) into the job's events and checkpoints. Every state
change is a row in SQLite first, so:

- cancel: the child gets SIGTERM, stops at the end of its step and saves a checkpoint there;
- server stop: the same, but the job stays ``running``: the next start resumes it;
- server crash: at the next start a job still ``running`` resumes from its last checkpoint
  (a child still alive is stopped first): never lost, never run twice;
- a child that dies on its own fails the job with the end of its log as the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from helpers.train_cli import ADAPTER_SUBDIR, SUMMARY_FILE

REPO_ROOT = Path(__file__).resolve().parents[2]
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TRAINING_NICE = 10  # how much nicer than the server the training child runs (19 = lowest)


def training_niceness() -> int:
    """The training child's niceness: the server's plus TRAINING_NICE, at most 19."""
    return min(19, os.getpriority(os.PRIO_PROCESS, 0) + TRAINING_NICE)


def _alive(pid: int | None, job_id: str) -> bool:
    """Whether ``pid`` is still this job's training process (not a reused pid)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    return not cmdline.exists() or job_id.encode() in cmdline.read_bytes()


class Worker(threading.Thread):
    """Runs the jobs of ``service`` in creation order, one at a time."""

    def __init__(self, service: Any, poll_s: float = 0.3):
        super().__init__(daemon=True, name="jobs-worker")
        self.service, self.store = service, service.store
        self.poll_s = poll_s
        self.stopping = threading.Event()
        self.wake = threading.Event()

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        self._recover()
        while not self.stopping.is_set():
            self._validate_pending()
            queued = self.store.jobs_with("queued")
            if queued:
                self._train(queued[0])
            else:
                self.wake.wait(self.poll_s)
                self.wake.clear()

    def stop(self) -> None:
        """Pause the running job at a checkpoint (it resumes at the next start) and end."""
        self.stopping.set()
        self.wake.set()
        self.join(timeout=120)

    def _recover(self) -> None:
        for job in self.store.jobs_with("running"):
            if _alive(job["pid"], job["id"]):  # the server died, its child did not: stop it
                os.kill(job["pid"], signal.SIGTERM)
                end = time.monotonic() + 60
                while _alive(job["pid"], job["id"]) and time.monotonic() < end:
                    time.sleep(0.2)
            step = self._last_checkpoint_step(job["id"])
            where = f"its checkpoint at step {step}" if step else "the start (no checkpoint yet)"
            self.store.update_job(job["id"], status="queued", pid=None)
            self.store.event(
                job["id"],
                f"The server restarted during training; resuming from {where}.",
                level="warn",
            )

    # --- validating_files -> queued ---------------------------------------------------------

    def _validate_pending(self) -> None:
        for job in self.store.jobs_with("validating_files"):  # also while another job trains
            self._validate(job)

    def _validate(self, job: dict[str, Any]) -> None:
        try:
            self.service.prepare_data(job)
        except ValueError as exc:  # a file deleted or changed since the job was created
            self._fail(job["id"], "invalid_training_file", str(exc), "training_file")
            return
        if self.store.transition(job["id"], ("validating_files",), status="queued"):
            self.store.event(job["id"], "Files validated; the job is queued.")

    # --- queued -> running -> done ----------------------------------------------------------

    def _train(self, job: dict[str, Any]) -> None:
        job_id = job["id"]
        folder = self.service.job_dir(job_id)
        free_gb = shutil.disk_usage(folder).free / 1e9
        if free_gb < self.service.min_free_gb:
            self._fail(
                job_id,
                "insufficient_disk",
                f"Only {free_gb:.1f} GB free in {folder}, "
                f"the job needs {self.service.min_free_gb:g} GB: free some disk (old "
                "checkpoints, outputs/) and create the job again.",
            )
            return
        if not self.store.transition(job_id, ("queued",), status="running"):
            return  # cancelled since it was read
        hp = job["hyperparameters"]
        # None: a checkpoint at the end of every epoch, as OpenAI keeps them
        rows = len((folder / "train.jsonl").read_text(encoding="utf-8").splitlines())
        batch = hp["per_device_batch_size"] * hp["gradient_accumulation_steps"]
        save_steps = self.service.save_steps or math.ceil(rows / batch)
        argv = [
            sys.executable, "-m", "helpers.train_cli",
            "--output-dir", str(folder / "train"),
            "--profile", self.service.profile.name,
            "--train-file", str(folder / "train.jsonl"),
            "--epochs", str(hp["n_epochs"]),
            "--per-device-batch-size", str(hp["per_device_batch_size"]),
            "--gradient-accumulation-steps", str(hp["gradient_accumulation_steps"]),
            "--learning-rate", str(hp["learning_rate"]),
            "--seed", str(job["seed"]),
            "--save-steps", str(save_steps),
            "--events", str(folder / "events.jsonl"),
            "--resume",
            "--graceful-stop",
            "--set", "save_total_limit=3",
            "--set", "report_to=[]",
        ]  # fmt: skip
        if job["validation_file"]:
            argv += ["--validation-file", str(folder / "validation.jsonl")]
        for key, value in (hp.get("lora") or {}).items():  # the training page's LoRA settings
            argv += ["--lora", f"{key}={json.dumps(value)}"]
        if hp.get("lr_scheduler_type"):
            argv += ["--set", f"lr_scheduler_type={hp['lr_scheduler_type']}"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COURSE_JOB_ID": job_id}
        with open(folder / "train.log", "ab") as log:
            child = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        # Training is batch work and the API is interactive: at nice 10 the child yields the
        # CPU to the server (on 2 cores it would otherwise slow API calls to 100+ ms). Set
        # before the child has imported torch, so its compute threads inherit it.
        with contextlib.suppress(OSError, AttributeError):  # AttributeError: no setpriority
            os.setpriority(os.PRIO_PROCESS, child.pid, training_niceness())
        self.store.update_job(job_id, pid=child.pid)
        self.store.event(job_id, "Fine-tuning job started.")
        signalled = False
        while child.poll() is None:
            self._read_events(job_id)
            self._validate_pending()
            stop_now = self.stopping.is_set() or self.store.get("jobs", job_id)["cancel_requested"]
            if stop_now and not signalled:
                child.send_signal(signal.SIGTERM)  # stops at the end of this step, checkpointed
                signalled = True
            time.sleep(self.poll_s)
        self._read_events(job_id)
        self.store.update_job(job_id, pid=None)
        code = child.returncode
        if self.store.get("jobs", job_id)["cancel_requested"]:
            self._finish_cancel(job_id)
        elif code == 0:
            self._succeed(job_id)
        elif self.stopping.is_set():  # STOPPED_EXIT, or stopped while still loading the model
            step = self._last_checkpoint_step(job_id)
            self.store.event(
                job_id,
                f"The server is stopping: paused at step {step}; the job "
                "resumes from there when the server starts again.",
            )
        else:
            tail = (folder / "train.log").read_text(errors="replace").strip().splitlines()[-3:]
            self._fail(
                job_id,
                "training_failed",
                f"Training exited with code {code}: "
                + " | ".join(tail)
                + f" (full log: {folder / 'train.log'})",
            )

    def _read_events(self, job_id: str) -> None:
        path = self.service.job_dir(job_id) / "events.jsonl"
        job = self.store.get("jobs", job_id)
        if not path.exists() or path.stat().st_size <= job["events_offset"]:
            return
        with open(path, "rb") as handle:
            handle.seek(job["events_offset"])
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits
        loss, eval_loss = job["last_loss"], job["last_eval_loss"]
        position = job["events_offset"]
        for line in complete.splitlines(keepends=True):
            # one id per line of the file: a line read twice (a crash before the offset below
            # was saved) is ignored the second time
            eid = f"ftevent-{job_id[6:18]}{position:012d}"
            position += len(line)
            event = json.loads(line)
            step, total = event["step"], event.get("total_steps")
            if event["type"] == "start":
                self.store.event(job_id, f"Training from step {step} of {total}.", event_id=eid)
            elif event["type"] == "log" and "loss" in event:
                loss = event["loss"]
                data = {"step": step, "total_steps": total, "train_loss": loss}
                message = f"Step {step}/{total}: training loss={loss:.4f}"
                self.store.event(job_id, message, data=data, event_id=eid)
            elif event["type"] == "log" and "eval_loss" in event:
                eval_loss = event["eval_loss"]
                data = {"step": step, "total_steps": total, "valid_loss": eval_loss}
                message = f"Step {step}/{total}: validation loss={eval_loss:.4f}"
                self.store.event(job_id, message, data=data, event_id=eid)
            elif event["type"] == "checkpoint":
                self.store.update_job(job_id, trained_tokens=event.get("tokens"))
                self.service.add_checkpoint(
                    job_id, step, Path(event["path"]), loss, eval_loss, event_id=eid
                )
        self.store.update_job(
            job_id,
            events_offset=job["events_offset"] + len(complete),
            last_loss=loss,
            last_eval_loss=eval_loss,
        )

    def _last_checkpoint_step(self, job_id: str) -> int:
        train = self.service.job_dir(job_id) / "train"
        steps = [int(p.name.split("-")[1]) for p in train.glob("checkpoint-*")]
        return max(steps, default=0)

    # --- endings ----------------------------------------------------------------------------

    def _succeed(self, job_id: str) -> None:
        job = self.store.get("jobs", job_id)
        folder = self.service.job_dir(job_id) / "train"
        summary = json.loads((folder / SUMMARY_FILE).read_text())
        data_hash = hashlib.sha256((folder.parent / "train.jsonl").read_bytes()).hexdigest()
        metrics = {k: summary[k] for k in ("final_loss", "final_eval_loss") if summary.get(k)}
        self.service.registry.register(
            job["model_name"], folder / ADAPTER_SUBDIR, data_hash=data_hash, metrics=metrics
        )
        self.store.update_job(
            job_id,
            status="succeeded",
            fine_tuned_model=job["model_name"],
            finished_at=int(time.time()),
            trained_tokens=summary.get("trained_tokens"),
        )
        self.store.event(job_id, f"New fine-tuned model created: {job['model_name']}")
        self.store.event(job_id, "The job has successfully completed.")

    def _finish_cancel(self, job_id: str) -> None:
        step = self._last_checkpoint_step(job_id)
        kept = f"; its checkpoint at step {step} is kept" if step else ""
        self.store.update_job(job_id, status="cancelled", finished_at=int(time.time()))
        self.store.event(job_id, f"The job was cancelled{kept}.")

    def _fail(self, job_id: str, code: str, message: str, param: str | None = None) -> None:
        error = {"code": code, "message": message, "param": param}
        self.store.update_job(job_id, status="failed", error=error, finished_at=int(time.time()))
        self.store.event(job_id, message, level="error")
