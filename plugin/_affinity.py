"""Where the plugin's own threads run: off the cores vLLM binds its model to.

On CPUs vLLM pins the worker's OpenMP threads to some cores and keeps others free
(`VLLM_CPU_OMP_THREADS_BIND=auto` reserves one). Threads inherit the core mask of the thread
that starts them, so the plugin's sender thread and gRPC's threads, started from the worker's
main thread, land on the model's cores and take time from the model at every step (a profile
showed the capture's Python under 1% of the worker, yet batch 8 lost ~8%). They move to the free
cores instead, when there are any.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_CPUS = Path("/sys/fs/cgroup/cpuset.cpus.effective")


def parse_cpus(text: str) -> set[int]:
    """'0,2-3' -> {0, 2, 3} (the kernel's cpu list format)."""
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or (hi and int(hi) < int(lo)):
            raise ValueError(f"not a cpu list: {text!r} (expected e.g. '1' or '0,2-3')")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def allowed_cpus() -> set[int]:
    try:
        return parse_cpus(CGROUP_CPUS.read_text().strip())
    except (OSError, ValueError):
        return set(range(os.cpu_count() or 1))


def helper_cpus(setting: str) -> set[int] | None:
    """Cores for the plugin's threads (None: leave them where they start).

    'auto': the cores this process may use minus those of the calling thread (call it from
    the model's thread, after vLLM bound it); 'inherit': None; else a cpu list.
    """
    if setting == "inherit" or not hasattr(os, "sched_getaffinity"):
        return None
    if setting != "auto":
        return parse_cpus(setting)
    free = allowed_cpus() - os.sched_getaffinity(0)
    return free or None


def move_current_thread(cpus: set[int] | None) -> None:
    if not cpus:
        return
    try:
        os.sched_setaffinity(0, cpus)  # 0: the calling thread only (Linux)
        log.info("latentguard: plugin threads on cores %s, off the model's", sorted(cpus))
    except OSError as exc:
        log.warning("latentguard: cannot move the plugin's threads to cores %s: %s",
                    sorted(cpus), exc)
