"""Fine-tuning as a service (notebook 08): OpenAI's files and fine-tuning jobs API, served locally.

    >>> from helpers.jobs import JobService
    >>> jobs = JobService("outputs/jobs", registry=registry)  # registry: an AdapterRegistry
    >>> server = start_server({"base": backend}, registry=registry, load_version=..., jobs=jobs)
    >>> client = openai.OpenAI(base_url=server.url, api_key=server.api_key)
    >>> client.fine_tuning.jobs.create(model=jobs.base_model, training_file=file.id)

:mod:`helpers.jobs.api` holds the routes, :mod:`helpers.jobs.validate` the checks,
:mod:`helpers.jobs.worker` the training loop, :mod:`helpers.jobs.store` the SQLite state,
:mod:`helpers.jobs.ui` the training page (Gradio, on these routes).
"""

from helpers.jobs.service import JobService

__all__ = ["JobService"]
