"""Child-process helpers shared by the launcher, the local database and the tests."""
from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


def stop_process(proc: subprocess.Popen | None, timeout_s: float = 10.0) -> None:
    """Stop ``proc`` politely (SIGTERM), then firmly (SIGKILL) after ``timeout_s``.

    When ``proc`` leads its own process group (started with ``start_new_session=True``,
    as every child here is), whatever is left of the group is killed too: a gunicorn
    worker stuck in a request must not outlive a master that was killed, or that
    exited, before it.
    """
    if proc is None:
        return
    group = _own_group(proc)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if group is not None:
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # the group is empty: every process in it has exited


def _own_group(proc: subprocess.Popen) -> int | None:
    """``proc``'s process group when ``proc`` leads it (never the caller's own group)."""
    try:
        group = os.getpgid(proc.pid)
    except ProcessLookupError:  # already reaped: its group id is its pid, if it led one
        group = proc.pid
    return group if group == proc.pid and group != os.getpgrp() else None


def describe_exit(returncode: int) -> str:
    """``exit code 3`` or ``killed by SIGKILL`` for a Popen returncode."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def command_line(pid: int) -> str:
    """The command line of process ``pid`` ('' when it is gone or a zombie)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except OSError:
        return ""


def pid_file_owner(pid_file: Path) -> int | None:
    """The live process that ``pid_file`` belongs to, or None after removing a stale file.

    A recorded pid counts only while that process's command line names ``pid_file``
    (gunicorn's ``--pid``, nx-27017's ``--pid-file``): after a crash the pid may belong
    to any other process by now, and a killed child that nobody reaped is a zombie with
    no command line. Neither may block the next start.
    """
    try:
        text = pid_file.read_text().strip()
    except FileNotFoundError:
        return None
    pid = int(text) if text.isdigit() else 0
    if pid and str(pid_file) in command_line(pid):
        return pid
    pid_file.unlink(missing_ok=True)
    return None


def wait_http(url: str, proc: subprocess.Popen, what: str, timeout_s: float = 60.0,
              poll_s: float = 0.25) -> None:
    """Wait until ``url`` answers 200; RuntimeError if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(poll_s)
    raise RuntimeError(f"{what} did not become healthy at {url} within {timeout_s:.0f} s")


CLOCK_TICKS_S = os.sysconf("SC_CLK_TCK")


def process_group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of every live process in a process group (/proc): a
    gunicorn master and its workers, or nx-27017 (each started in its own session)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:               # field 5: process group
            total += int(fields[11]) + int(fields[12])  # fields 14, 15: utime, stime
    return total / CLOCK_TICKS_S
