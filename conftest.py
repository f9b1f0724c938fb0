"""Test-run plumbing for the whole suite (tests/ and the notebooks nbval executes).

- The run's header names the CPU, its SIMD flags, the llama.cpp build and bitsandbytes' CPU
  path, so a failure can be matched to the machine it happened on.
- A notebook whose kernel dies (a segfault, SIGILL from an instruction the CPU lacks, the OOM
  killer) fails at once with the signal, instead of nbval waiting for a reply from a dead process
  until its cell timeout. nbval 0.11 has no such check, so its wait is wrapped here.
"""

from __future__ import annotations

import signal
from queue import Empty

pytest_plugins = ["pytester"]  # tests/test_course.py runs nbval in a subprocess

POLL_SECONDS = 2.0  # how often a waiting nbval checks that the kernel process is still there


class KernelDiedError(RuntimeError):
    """The notebook's kernel process exited while a cell was running."""


def _exit_reason(kernel) -> str:
    process = getattr(getattr(kernel.km, "provisioner", None), "process", None)
    code = getattr(process, "returncode", None)
    if code is None:
        return "the kernel process exited"
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (an instruction this CPU cannot run)" if name == "SIGILL" else ""
        return f"the kernel was killed by {name}{hint}"
    return f"the kernel exited with code {code}"


def _get_message_checking_liveness(original):
    """nbval's RunningKernel.get_message, polling in slices and failing if the kernel died."""

    def get_message(self, stream, timeout=None):
        waited = 0.0
        while True:
            step = POLL_SECONDS if timeout is None else min(POLL_SECONDS, timeout - waited)
            try:
                return original(self, stream, timeout=max(step, 0.0))
            except Empty:
                waited += step
                if not self.is_alive():
                    raise KernelDiedError(
                        f"{_exit_reason(self)} while a cell ran; the test log's header names "
                        "this CPU and the llama.cpp build."
                    ) from None
                if timeout is not None and waited >= timeout:
                    raise

    return get_message


def pytest_configure(config):
    try:
        from nbval.kernel import RunningKernel
    except ImportError:
        return
    if not getattr(RunningKernel.get_message, "_checks_liveness", False):
        RunningKernel.get_message = _get_message_checking_liveness(RunningKernel.get_message)
        RunningKernel.get_message._checks_liveness = True


def pytest_report_header(config):
    from helpers import cpu

    return cpu.report()
