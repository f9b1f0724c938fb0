"""A job's progress as the client sees it: the loss curve from its events, redrawn while it runs.

    >>> job = watch(client, job.id)  # polls, redraws the loss in place, returns the final job
    >>> loss_curve(client, job.id)  # [(step, training loss), ...]

Only the ``openai`` client is used, so the same code watches a job on OpenAI's hosted API.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from helpers.jobs.store import FINAL


def loss_curve(client: Any, job_id: str) -> list[tuple[int, float]]:
    """(step, training loss) from every metrics event, oldest first (iterating pages them all)."""
    points = {
        int(e.data["step"]): float(e.data["train_loss"])
        for e in client.fine_tuning.jobs.list_events(job_id, limit=100)
        if e.type == "metrics" and e.data and "train_loss" in e.data
    }
    return sorted(points.items())


def watch(
    client: Any,
    job_id: str,
    until: Callable[[Any], bool] = lambda job: job.status in FINAL,
    timeout_s: float = 3600.0,
    every_s: float = 1.0,
) -> Any:
    """Poll the job until ``until(job)``, redrawing its loss curve in place; the last job object."""
    import matplotlib.pyplot as plt
    from IPython.display import display

    fig, ax = plt.subplots(figsize=(6, 3))
    shown = display(fig, display_id=True)
    end = time.monotonic() + timeout_s
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        curve = loss_curve(client, job_id)
        ax.clear()
        if curve:
            ax.plot(*zip(*curve, strict=True), marker=".")
        ax.set(xlabel="step", ylabel="training loss", title=f"{job_id}: {job.status}")
        if shown is not None:
            shown.update(fig)
        if until(job):
            break
        if time.monotonic() > end:
            plt.close(fig)
            raise TimeoutError(f"{job_id} is still {job.status} after {timeout_s:g} s.")
        time.sleep(every_s)
    plt.close(fig)
    return job
