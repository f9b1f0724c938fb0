"""Monitoring the served model and the data flywheel (notebook 07).

``log``: every request and its feedback in SQLite; ``metrics``: Prometheus metrics for
``/metrics``; ``security``: prompt-injection and PII checks; ``drift``: input and output drift
between two windows of traffic; ``alerts``: the repository's Prometheus alert rules evaluated
offline; ``registry``: adapter versions, canary and rollback; ``flywheel``: bad cases mined
from the log into round-2 training data.
"""
