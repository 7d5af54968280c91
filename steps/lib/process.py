"""Which process runs a step: an identity that survives pid reuse, whether that process still lives, its cores."""

from __future__ import annotations

import atexit
import functools
import gc
import importlib.util
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def no_collection_at_exit() -> None:
    """As this process exits, the objects it holds are left out of the garbage collector's last passes.

    Python's shutdown collects garbage while it tears the modules down, and each pass visits every object
    MLflow, pandas and scikit-learn made as they were imported (~300,000): 0.7-0.8 s at the exit of a step
    that did nothing, ~1.1 s at featurize's at a million rows, against 0.14 s for one `gc.collect()` (measured
    here, docs/performance.md). Exit handlers still run (those registered later, as MLflow's flushes are,
    run before this one); the memory goes back to the system with the process. Every step process, trial worker
    and trial logger calls it as it starts: main waits for each step to exit, tune for its workers."""
    atexit.register(gc.freeze)


HUGE_PAGES_VARIABLE = "NUMPY_MADVISE_HUGEPAGE"  # numpy's own switch, read as numpy is imported


def small_pages_for_arrays() -> None:
    """numpy asks the kernel to back each array of 4 MiB or more with 2 MiB pages (madvise, on Linux), and where
    the kernel has none free it compacts memory to make them as the pages are first touched (transparent huge
    pages with `defrag` = madvise, a common default). Every step is a new process that fills up to ~1.5 GiB at a
    million rows: 1 GiB took 3.3-3.8 s to fill in 2 MiB pages after a quiet minute here, 0.6-0.8 s in 4 KiB pages
    (docs/performance.md). So a step, and every process it starts (main's steps, tune's trial workers), uses
    4 KiB pages, unless NUMPY_MADVISE_HUGEPAGE is set: then that says."""
    if HUGE_PAGES_VARIABLE in os.environ:
        return
    os.environ[HUGE_PAGES_VARIABLE] = "0"  # the processes this one starts read it as they import numpy
    import numpy

    switch = getattr(getattr(numpy, "_core", None), "multiarray", None)  # numpy imported it already: its setter
    if hasattr(switch, "_set_madvise_hugepage"):
        switch._set_madvise_hugepage(False)


def compiled_at_each_import(module_file: str) -> bool:
    """Whether every process compiles this module from source as it imports it: no bytecode cached beside it,
    and the interpreter may not write one (PYTHONDONTWRITEBYTECODE, set in many container images). pip compiles
    what it installs; `uv pip install` does not unless asked (--compile-bytecode, UV_COMPILE_BYTECODE=1)."""
    if not sys.dont_write_bytecode:
        return False
    try:
        return not Path(importlib.util.cache_from_source(module_file)).exists()
    except (NotImplementedError, ValueError):  # no bytecode cache in this interpreter
        return False


def process_identity(pid: int | None = None) -> str:
    """machine:pid:start-time, unique even when the system reuses a pid (start time from /proc; '' elsewhere)."""
    pid = os.getpid() if pid is None else pid
    return f"{machine_identity()}:{pid}:{process_start_time(pid)}"


@functools.cache
def machine_identity() -> str:
    """Host name, boot and pid namespace: containers that share a host name do not share pids."""
    parts = [socket.gethostname().replace(":", "_")]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8])
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:  # no /proc (macOS): the host name alone
        pass
    return "/".join(parts)


def process_start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22); '' if unknown."""
    fields = proc_stat_fields(pid)
    return fields[19] if fields else ""


def proc_stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat's fields after the command name (state first, start time 20th); [] if unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return stat.rpartition(")")[2].split()


def process_alive(identity: str) -> bool | None:
    """Whether the process a PROCESS_TAG names still runs: True or False only when sure, else None (unknown).

    Unknown: another machine; not POSIX (on Windows, os.kill(pid, 0) would end the process); no start time
    recorded (no /proc: a pid may have been reused since a reboot); a start time that cannot be read (/proc
    mounted hidepid=2, another user's process). Callers leave an unknown process alone.
    """
    machine, _, rest = identity.partition(":")
    pid_text, _, started = rest.partition(":")
    if machine != machine_identity() or not pid_text.isdigit() or os.name != "posix":
        return None
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    except OSError:
        return None
    fields = proc_stat_fields(pid) if started else []
    if not fields:
        return None
    if fields[0] in ("Z", "X"):  # a zombie (killed, not yet reaped by its parent) or dead: it runs no more
        return False
    return fields[19] == started


@contextmanager
def main_module_unseen_by_children() -> Iterator[None]:
    """Spawned children import the parent's main module (`python -m steps.tune`: MLflow, hyperopt, click, ~2.5 s
    of CPU each) unless it has no spec and no file; tune's children need only the module of their target, by name
    (the trial workers steps.lib.trials, the trial logger steps.lib.trial_logger)."""
    main = sys.modules["__main__"]
    saved = {name: main.__dict__[name] for name in ("__spec__", "__file__") if name in main.__dict__}
    main.__spec__ = None
    main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        main.__dict__.update(saved)
