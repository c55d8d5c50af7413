"""analysis_slots: heavy analyses bounded across processes and threads of one host."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from sleeplab.analysis import slots as analysis_slots
from sleeplab.analysis.slots import AnalysisSlots, SlotsBusy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLDER = """
import time
from sleeplab.analysis.slots import AnalysisSlots
with AnalysisSlots({folder!r}, {count}, 0.0).hold():
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path):
    """Start a process (a worker) that holds one of ``count`` slots until killed."""
    procs = []

    def start(count: int) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(folder=str(tmp_path), count=count)],
                                stdout=subprocess.PIPE, text=True, cwd=ROOT)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_slot_held_by_another_process_is_not_given_out(tmp_path, holder):
    holder(1)
    with pytest.raises(SlotsBusy, match="all 1 analysis slots are taken"):
        AnalysisSlots(str(tmp_path), 1, 0.0).hold()


def test_the_other_slots_stay_free(tmp_path, holder):
    holder(2)
    slots = AnalysisSlots(str(tmp_path), 2, 0.0)
    with slots.hold():
        with pytest.raises(SlotsBusy):
            slots.hold()


def test_a_killed_worker_frees_its_slot(tmp_path, holder):
    proc = holder(1)
    slots = AnalysisSlots(str(tmp_path), 1, 5.0)
    os.kill(proc.pid, signal.SIGKILL)
    start = time.monotonic()
    with slots.hold():  # the kernel dropped the lock with the process
        assert time.monotonic() - start < 5.0


def test_threads_of_one_process_exclude_each_other(tmp_path):
    slots = AnalysisSlots(str(tmp_path), 1, 10.0)
    inside, most = [0], [0]
    lock = threading.Lock()

    def work():
        with slots.hold():
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.02)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1


def test_waits_for_a_slot_freed_within_the_wait(tmp_path):
    slots = AnalysisSlots(str(tmp_path), 1, 5.0)
    held = slots.hold()
    timer = threading.Timer(0.2, held.__exit__, (None, None, None))
    timer.start()
    with slots.hold():
        pass
    timer.join()


@pytest.mark.parametrize("count, wait_s", [(0, 1.0), (1, -1.0)])
def test_bad_settings_are_refused(tmp_path, count, wait_s):
    with pytest.raises(ValueError, match="count must be >= 1 and wait >= 0 s"):
        AnalysisSlots(str(tmp_path), count, wait_s)


def test_a_directory_others_may_write_is_refused(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    with pytest.raises(RuntimeError, match="not be writable by others"):
        AnalysisSlots(str(folder), 1, 0.0)


def test_default_count_is_half_the_cpus(monkeypatch):
    for cpus, count in [(1, 1), (2, 1), (4, 2), (16, 4)]:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cpus: set(range(n)))
        assert analysis_slots.default_slot_count() == count


@pytest.mark.skipif(analysis_slots._MALLOC_TRIM is None, reason="glibc only")
def test_release_memory_returns_freed_heap_to_the_system():
    """Many small blocks freed in the middle of the heap stay in this process's RSS until
    malloc_trim gives their pages back."""
    def rss_kb() -> int:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))

    keep = []
    blocks = [bytearray(4000) for _ in range(50_000)]  # ~200 MB below the mmap threshold
    keep.append(bytearray(4000))  # a live block above them: the heap top cannot shrink
    del blocks
    before = rss_kb()
    assert analysis_slots.release_memory() is True
    assert rss_kb() < before - 100_000
