"""Bounds on heavy recording analyses: slots shared by every worker of a host, and
returning the memory an analysis freed.

A slot is an exclusive ``flock`` on one of N lock files in a directory every worker process
of the host sees. The kernel drops a lock when its descriptor is closed, also when the
process dies (``kill -9``, out of memory), so a crashed worker never keeps a slot (a POSIX
semaphore or a counter in shared memory or in the database would stay taken). Each
acquisition opens its own descriptor, and ``flock`` locks belong to the open file, so the
threads of one process exclude each other too: the same N bounds a process and the host.
"""
from __future__ import annotations

import ctypes
import fcntl
import gc
import os
import stat
import tempfile
import time

#: How often a request waiting for a slot tries again, s.
POLL_S = 0.05


def default_slot_count() -> int:
    """Half the CPUs this process may use, at least 1, at most 4: one analysis already
    parses with several threads, and each holds about 5x its file in memory."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus // 2))


def default_lock_dir() -> str:
    """One directory per user and host, so every worker (and every API process of this
    user) shares the same slots."""
    return os.path.join(tempfile.gettempdir(), f"sleeplab-analysis-slots-{os.getuid()}")


class SlotsBusy(Exception):
    """Every slot stayed taken for the whole wait."""


class AnalysisSlots:
    """At most ``count`` holders at once across the processes using ``directory``.

    Parameters
    ----------
    directory : str
        Lock-file directory; created (mode 0700) if missing, refused if another user owns
        it or others may write to it (they could hold the slots).
    count : int
        Number of slots, at least 1.
    wait_s : float
        How long :meth:`hold` waits for a free slot before raising :class:`SlotsBusy`.
    """

    def __init__(self, directory: str, count: int, wait_s: float):
        if count < 1 or wait_s < 0:
            raise ValueError(f"analysis slots: count must be >= 1 and wait >= 0 s "
                             f"(got {count}, {wait_s})")
        os.makedirs(directory, mode=0o700, exist_ok=True)
        info = os.stat(directory)
        if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise RuntimeError(f"analysis slot directory {directory!r} must belong to this user "
                               f"and not be writable by others (set API_ANALYSIS_LOCK_DIR)")
        self.paths = [os.path.join(directory, f"slot-{i}.lock") for i in range(count)]
        self.wait_s = wait_s

    def _try_each(self) -> int | None:
        """The descriptor of a slot now held, or None when all are taken."""
        for path in self.paths:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return fd
        return None

    def hold(self) -> "_Held":
        """A held slot (a context manager that releases it), waiting up to ``wait_s``.

        Raises
        ------
        SlotsBusy
            When no slot became free in time.
        """
        deadline = time.monotonic() + self.wait_s
        fd = self._try_each()
        while fd is None:
            if time.monotonic() >= deadline:
                raise SlotsBusy(f"all {len(self.paths)} analysis slots are taken")
            time.sleep(POLL_S)
            fd = self._try_each()
        return _Held(fd)


class _Held:
    def __init__(self, fd: int):
        self._fd = fd

    def __enter__(self) -> "_Held":
        return self

    def __exit__(self, *exc_info) -> None:
        os.close(self._fd)  # closing the descriptor releases the lock


def _find_malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None


_MALLOC_TRIM = _find_malloc_trim()


def release_memory() -> bool:
    """Collect garbage and give the C heap's free pages back to the system.

    glibc keeps freed memory for reuse, in the heap and in one arena per thread that
    allocated (pandas' and our parse threads): a worker that analysed 200 MB recordings
    stayed at 0.6-2 GB. ``malloc_trim(0)`` returns every free page. Returns False where
    there is no glibc.
    """
    gc.collect()  # figures and frames hold reference cycles
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True
