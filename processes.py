"""Child-process helpers shared by the launcher, the local database and the tests."""
from __future__ import annotations

import signal
import subprocess
import time
import urllib.error
import urllib.request


def stop_process(proc: subprocess.Popen | None, timeout_s: float = 10.0) -> None:
    """Stop ``proc`` politely (SIGTERM), then firmly (SIGKILL) after ``timeout_s``."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
