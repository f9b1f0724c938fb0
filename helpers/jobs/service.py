"""``JobService``: storage, the worker and the adapters it registers, behind the server's routes.

    >>> jobs = JobService("outputs/jobs", registry=AdapterRegistry("outputs/jobs/registry.json"))
    >>> start_server({"base": peft.base()}, registry=jobs.registry,
    ...              load_version=peft.load_version, jobs=jobs)

Uploaded files live in ``<root>/files/<id>.jsonl`` (ids are checked against their exact shape
before they become a path), jobs in ``<root>/jobs/<id>/`` (normalised data, the trainer's
folder, its log and events, checkpoint adapters), state in ``<root>/jobs.sqlite3``. A finished
job's adapter and each checkpoint's are registered in the :class:`AdapterRegistry` under their
``ft:`` names, so the server answers them at once (loaded the first time they are asked for).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from helpers.jobs.store import Store, valid_id
from helpers.jobs.validate import parse_rows
from helpers.jobs.worker import ADAPTER_FILES, Worker
from helpers.profiles import Profile, active_profile


class JobService:
    """Files and fine-tuning jobs for the profile's base model; ``close()`` pauses training."""

    def __init__(
        self,
        root: str | Path,
        registry: Any,  # helpers.monitor.registry.AdapterRegistry
        profile: Profile | None = None,
        *,
        org: str = "course",
        max_upload_bytes: int = 50_000_000,
        max_active_jobs: int = 4,
        min_free_gb: float = 1.0,
        save_steps: int | None = None,
    ):
        self.root = Path(root).expanduser().resolve()
        self.registry = registry
        self.profile = profile or active_profile()
        self.org = org
        self.max_upload_bytes = max_upload_bytes
        self.max_active_jobs = max_active_jobs
        self.min_free_gb = min_free_gb
        self.save_steps = save_steps  # None: a checkpoint at the end of every epoch
        self.store = Store(self.root / "jobs.sqlite3")
        (self.root / "files").mkdir(parents=True, exist_ok=True)
        self.worker = Worker(self)
        self.worker.start()

    @property
    def base_model(self) -> str:
        """The model id jobs fine-tune (the profile's)."""
        return self.profile.model_id

    def model_name(self, job_id: str, suffix: str | None) -> str:
        """OpenAI's ``ft:<base>:<org>:<suffix>:<id>`` (the base without its hub organisation)."""
        base = self.base_model.rsplit("/", 1)[-1]
        return f"ft:{base}:{self.org}:{suffix or ''}:{job_id.removeprefix('ftjob-')[:8]}"

    def file_path(self, file_id: str) -> Path:
        """Where an uploaded file is kept; refuses anything but a well-formed file id."""
        if not valid_id("file", file_id):
            raise ValueError(f"{file_id!r} is not a file id (file-<24 hex digits>).")
        return self.root / "files" / f"{file_id}.jsonl"

    def job_dir(self, job_id: str) -> Path:
        """The job's folder (created on first use)."""
        if not valid_id("ftjob", job_id):
            raise ValueError(f"{job_id!r} is not a job id (ftjob-<24 hex digits>).")
        folder = self.root / "jobs" / job_id
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def prepare_data(self, job: dict[str, Any]) -> None:
        """Write the job's files as ``{"messages"}`` rows for the trainer (checked again)."""
        import json

        folder = self.job_dir(job["id"])
        for kind in ("training", "validation"):
            file_id = job[f"{kind}_file"]
            if file_id is None:
                continue
            path = self.file_path(file_id)
            if not path.exists():
                raise ValueError(f"The {kind} file {file_id} was deleted before the job started.")
            rows = parse_rows(path.read_bytes())
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            (folder / f"{'train' if kind == 'training' else kind}.jsonl").write_text(text)

    def add_checkpoint(
        self,
        job_id: str,
        step: int,
        folder: Path,
        loss: float | None,
        eval_loss: float | None,
        event_id: str | None = None,
    ) -> None:
        """Keep the adapter of the trainer's checkpoint at ``step`` and register its name.

        Safe to call again for the same step (a resumed job saves it again, or its event is
        read twice after a crash): the copy is refreshed, the name and row are added once.
        """
        job = self.store.get("jobs", job_id)
        name = f"{job['model_name']}:ckpt-step-{step}"
        target = self.job_dir(job_id) / "checkpoints" / f"step-{step}"
        if not all((folder / f).exists() for f in ADAPTER_FILES):
            self.store.event(
                job_id,
                f"Checkpoint at step {step} was gone before it could be kept "
                "(the trainer keeps only its last 3).",
                level="warn",
                event_id=event_id,
            )
            return
        target.mkdir(parents=True, exist_ok=True)
        for f in ADAPTER_FILES:
            shutil.copy2(folder / f, target / f)
        if name not in {v["version"] for v in self.registry.versions()}:  # resumed: saved again
            self.registry.register(name, target, metrics={"step": step})
        if self.store.get("checkpoints", f"ftckpt-{job_id[6:18]}{step:012d}") is None:
            self.store.insert(
                "checkpoints",
                id=f"ftckpt-{job_id[6:18]}{step:012d}",  # one per job and step, even if resumed
                job_id=job_id,
                created_at=int(time.time()),
                step_number=step,
                metrics={"step": step, "train_loss": loss, "valid_loss": eval_loss},
                fine_tuned_model_checkpoint=name,
            )
        self.store.event(job_id, f"Checkpoint saved at step {step}: {name}", event_id=event_id)

    def mount(self, app: Any, check_key: Any) -> None:
        """Add the files and fine-tuning routes to the server's app, behind its API key."""
        from helpers.jobs.api import router

        app.include_router(router(self, check_key))

    def close(self) -> None:
        """Stop the worker; a running job saves a checkpoint and resumes at the next start."""
        self.worker.stop()
