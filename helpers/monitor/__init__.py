"""Monitoring the served model and the data flywheel (notebook 07).

``log``: every request and its feedback in SQLite; ``recorder``: writes log rows and metrics
off the server's event loop; ``metrics``: Prometheus metrics for ``/metrics``; ``security``:
prompt-injection and PII checks; ``replay``: recorded traffic sent through the ``openai``
client, with simulated users' feedback; ``drift``: input and output drift between windows of
traffic; ``alerts``: the repository's Prometheus alert rules evaluated offline; ``registry``:
adapter versions, canary, promote and rollback; ``flywheel``: bad cases mined from the log
into round-2 training data and preference pairs.
"""
