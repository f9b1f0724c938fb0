"""OpenAI's files and fine-tuning jobs routes, as the ``openai`` client calls them.

    POST /v1/files   GET /v1/files[/{id}[/content]]   DELETE /v1/files/{id}
    POST /v1/fine_tuning/jobs   GET /v1/fine_tuning/jobs[/{id}]   POST .../{id}/cancel
    GET /v1/fine_tuning/jobs/{id}/events   GET /v1/fine_tuning/jobs/{id}/checkpoints

Objects have OpenAI's fields; lists are cursor pages (``data``, ``has_more``; the next page
is ``after=<last id>``); errors are the server's OpenAI-shaped JSON with ``param`` naming the
field at fault. Every route needs the server's API key.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from helpers.jobs.store import ACTIVE, FINAL, new_id, valid_id
from helpers.jobs.validate import (
    MIN_EXAMPLES,
    Invalid,
    hyperparameters,
    parse_rows,
    suffix_and_metadata,
)
from helpers.serve.server import APIError, read_body

MAX_JOB_BODY = 64_000
OPENAI_HYPER = ("n_epochs", "batch_size", "learning_rate_multiplier")


def _bad(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, "invalid_request_error", code, param=param)


def _not_found(what: str, value: str, param: str | None = None) -> APIError:
    return APIError(
        404,
        f"No {what} {value!r} here.",
        "invalid_request_error",
        f"{what.replace(' ', '_')}_not_found",
        param=param,
    )


def _owner(request: Request) -> str:
    """Who asks: a hash of their API key (jobs and files are per key), or "local"."""
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    return hashlib.sha256(token.encode()).hexdigest()[:16] if token else "local"


def _page(rows: list[dict[str, Any]], more: bool, shape) -> dict[str, Any]:
    data = [shape(r) for r in rows]
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    return {"object": "list", "data": data, "has_more": more, "first_id": first, "last_id": last}


def _limit(value: str | None) -> int:
    try:
        limit = 20 if value is None else int(value)
    except ValueError:
        raise _bad(f"limit must be a whole number, got {value!r}.", "limit") from None
    if not 1 <= limit <= 100:
        raise _bad(f"limit must be between 1 and 100, got {limit}.", "limit")
    return limit


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "bytes", "created_at", "filename", "purpose")
    return {
        **{k: row[k] for k in keys},
        "object": "file",
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


def job_object(row: dict[str, Any], org: str) -> dict[str, Any]:
    hyper = {k: row["hyperparameters"][k] for k in OPENAI_HYPER}
    keys = (
        "id",
        "created_at",
        "error",
        "fine_tuned_model",
        "finished_at",
        "model",
        "seed",
        "status",
        "trained_tokens",
        "training_file",
        "validation_file",
        "metadata",
    )
    return {
        **{k: row[k] for k in keys},
        "object": "fine_tuning.job",
        "hyperparameters": hyper,
        "organization_id": f"org-{org}",
        "result_files": [],
        "estimated_finish": None,
        "integrations": [],
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
    }


def event_object(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "created_at", "level", "message", "type", "data")
    return {**{k: row[k] for k in keys}, "object": "fine_tuning.job.event"}


def checkpoint_object(row: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "id",
        "created_at",
        "fine_tuned_model_checkpoint",
        "fine_tuning_job_id",
        "metrics",
        "step_number",
    )
    row = {**row, "fine_tuning_job_id": row["job_id"]}
    return {**{k: row[k] for k in keys}, "object": "fine_tuning.job.checkpoint"}


def router(service: Any, check_key: Any) -> APIRouter:  # service: helpers.jobs.JobService
    """The routes, bound to ``service`` and guarded by the server's ``check_key``."""
    store = service.store
    api = APIRouter(prefix="/v1", dependencies=[Depends(check_key)])

    def own_file(file_id: str, request: Request, param: str | None = None) -> dict[str, Any]:
        row = store.get("files", file_id) if valid_id("file", file_id) else None
        if row is None or row["owner"] != _owner(request):
            raise _not_found("file", file_id, param)
        return row

    def own_job(job_id: str, request: Request) -> dict[str, Any]:
        row = store.get("jobs", job_id) if valid_id("ftjob", job_id) else None
        if row is None or row["owner"] != _owner(request):
            raise _not_found("fine-tuning job", job_id)
        return row

    # --- files ------------------------------------------------------------------------------

    @api.post("/files")
    async def upload(request: Request) -> dict[str, Any]:
        limit = service.max_upload_bytes
        too_big = APIError(
            413,
            f"The file is larger than this server's limit of {limit} bytes: "
            "split it, or start JobService(max_upload_bytes=...) higher.",
            "invalid_request_error",
            "file_too_large",
            param="file",
        )
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit + 10_000:
            raise too_big
        try:
            form = await request.form(max_files=1, max_fields=4)
        except StarletteHTTPException as exc:  # starlette's multipart errors are 400s
            raise _bad(
                f"The upload is not a valid form: {exc.detail}. Send one file with "
                "client.files.create(file=..., purpose='fine-tune').",
                "file",
            ) from None
        upload, purpose = form.get("file"), form.get("purpose")
        if purpose != "fine-tune":
            raise _bad(
                f"purpose {purpose!r} is not supported here: upload training data with "
                "purpose='fine-tune'.",
                "purpose",
            )
        if upload is None or isinstance(upload, str):
            raise _bad(
                "Send the file as multipart field 'file' (client.files.create(file=...)).", "file"
            )
        data = await upload.read()
        if len(data) > limit:
            raise too_big
        try:
            rows = await run_in_threadpool(parse_rows, data)
        except Invalid as exc:
            raise _bad(exc.message, exc.param, exc.code) from None
        row = {
            "id": new_id("file"),
            "owner": _owner(request),
            "filename": (upload.filename or "upload.jsonl").replace("\\", "/").rsplit("/")[-1],
            "bytes": len(data),
            "created_at": int(time.time()),
            "purpose": "fine-tune",
            "examples": len(rows),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        service.file_path(row["id"]).write_bytes(data)
        store.insert("files", **row)
        return file_object(row)

    @api.get("/files")
    def list_files(request: Request, after: str | None = None, limit: str | None = None):
        rows, more = store.page("files", _limit(limit), after, owner=_owner(request))
        return _page(rows, more, file_object)

    @api.get("/files/{file_id}")
    def retrieve_file(file_id: str, request: Request) -> dict[str, Any]:
        return file_object(own_file(file_id, request))

    @api.get("/files/{file_id}/content")
    def file_content(file_id: str, request: Request):
        from fastapi.responses import Response

        own_file(file_id, request)
        return Response(service.file_path(file_id).read_bytes(), media_type="application/jsonl")

    @api.delete("/files/{file_id}")
    def delete_file(file_id: str, request: Request) -> dict[str, Any]:
        own_file(file_id, request)
        service.file_path(file_id).unlink(missing_ok=True)
        store.delete("files", file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    # --- jobs -------------------------------------------------------------------------------

    @api.post("/fine_tuning/jobs")
    async def create_job(request: Request) -> dict[str, Any]:
        body = await read_body(request, MAX_JOB_BODY)
        try:
            body = json.loads(body)
        except ValueError:
            raise _bad("The body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise _bad("The body must be a JSON object.")
        return await run_in_threadpool(new_job, body, request)

    def new_job(body: dict[str, Any], request: Request) -> dict[str, Any]:
        model = body.get("model")
        if not isinstance(model, str) or model != service.base_model:
            if isinstance(model, str) and model.startswith("ft:"):
                raise _bad(
                    "Continuing a fine-tuned model is not supported here: fine-tune "
                    f"the base model {service.base_model!r}.",
                    "model",
                )
            raise APIError(
                404,
                f"Model {model!r} cannot be fine-tuned here; this server "
                f"fine-tunes {service.base_model!r} (profile "
                f"{service.profile.name}).",
                "invalid_request_error",
                "model_not_found",
                param="model",
            )
        owner = _owner(request)
        files = {}
        for param in ("training_file", "validation_file"):
            file_id = body.get(param)
            if file_id is None and param == "validation_file":
                continue
            if not isinstance(file_id, str):
                raise _bad(f"{param} must be a file id from client.files.create(...).", param)
            files[param] = own_file(file_id, request, param)
        n = files["training_file"]["examples"]
        if n < MIN_EXAMPLES:
            raise _bad(
                f"The training file has {n} examples; at least {MIN_EXAMPLES} are needed: "
                "add examples and upload it again.",
                "training_file",
                "invalid_training_file",
            )
        try:
            hyper, multiplier = hyperparameters(body, service.profile, n)
            suffix, metadata = suffix_and_metadata(body)
        except Invalid as exc:
            raise _bad(exc.message, exc.param, exc.code) from None
        seed = body.get("seed")
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31
        ):
            raise _bad(f"seed must be a whole number in 0..2147483647, got {seed!r}.", "seed")
        if len(store.jobs_with(*ACTIVE, owner=owner)) >= service.max_active_jobs:
            raise APIError(
                429,
                f"You have {service.max_active_jobs} unfinished jobs, this "
                "server's limit: wait for one to finish or cancel one.",
                "rate_limit_error",
                "quota_exceeded",
            )
        job_id = new_id("ftjob")
        per_epoch = -(-n // hyper.batch_size)
        store.insert(
            "jobs",
            id=job_id,
            owner=owner,
            created_at=int(time.time()),
            model=model,
            training_file=files["training_file"]["id"],
            validation_file=files.get("validation_file", {}).get("id"),
            hyperparameters={
                **hyper.shown(multiplier),
                "per_device_batch_size": hyper.per_device_batch_size,
                "gradient_accumulation_steps": hyper.gradient_accumulation_steps,
                "learning_rate": hyper.learning_rate,
                "steps_per_epoch": per_epoch,
                "lora": hyper.lora,
                "lr_scheduler_type": hyper.lr_scheduler_type,
            },
            seed=random.randrange(2**31) if seed is None else seed,
            suffix=suffix,
            metadata=metadata,
            status="validating_files",
            model_name=service.model_name(job_id, suffix),
        )
        store.event(job_id, f"Created fine-tuning job: {job_id}")
        created = job_object(store.get("jobs", job_id), service.org)  # as created
        service.worker.wake.set()
        return created

    @api.get("/fine_tuning/jobs")
    def list_jobs(request: Request, after: str | None = None, limit: str | None = None):
        rows, more = store.page("jobs", _limit(limit), after, owner=_owner(request))
        return _page(rows, more, lambda r: job_object(r, service.org))

    @api.get("/fine_tuning/jobs/{job_id}")
    def retrieve_job(job_id: str, request: Request) -> dict[str, Any]:
        return job_object(own_job(job_id, request), service.org)

    @api.post("/fine_tuning/jobs/{job_id}/cancel")
    def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
        job = own_job(job_id, request)
        now = int(time.time())
        if store.transition(
            job_id,
            ("validating_files", "queued"),
            status="cancelled",
            cancel_requested=1,
            finished_at=now,
        ):
            store.event(job_id, "The job was cancelled before it started.")
        elif store.transition(job_id, ("running",), cancel_requested=1):
            store.event(
                job_id,
                "Cancellation requested: training stops at the end of this "
                "step and keeps its last checkpoint.",
            )
        elif job["status"] in FINAL:
            raise _bad(
                f"The job is already {job['status']}; only unfinished jobs can be cancelled.",
                "fine_tuning_job_id",
                "job_not_cancellable",
            )
        return job_object(store.get("jobs", job_id), service.org)

    @api.get("/fine_tuning/jobs/{job_id}/events")
    def list_events(
        job_id: str, request: Request, after: str | None = None, limit: str | None = None
    ):
        own_job(job_id, request)
        rows, more = store.page("events", _limit(limit), after, job_id=job_id)
        return _page(rows, more, event_object)

    @api.get("/fine_tuning/jobs/{job_id}/checkpoints")
    def list_checkpoints(
        job_id: str, request: Request, after: str | None = None, limit: str | None = None
    ):
        own_job(job_id, request)
        rows, more = store.page("checkpoints", _limit(limit), after, job_id=job_id)
        return _page(rows, more, checkpoint_object)

    return api
