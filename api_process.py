"""Run the API under gunicorn in a child process (integration tests and benchmarks).

The same command as the quick start (``launcher.py``): ``gunicorn 'server:create_app()'``
with ``MONGODB_URI`` in the environment, bound to a loopback port.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from local_mongo import free_port

ROOT = Path(__file__).resolve().parent


@dataclass
class ApiServer:
    mongodb_uri: str
    workers: int = 2
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    extra_env: dict = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> "ApiServer":
        env = dict(os.environ, MONGODB_URI=self.mongodb_uri, **self.extra_env)
        gunicorn = Path(sys.executable).with_name("gunicorn")
        self.process = subprocess.Popen(
            [str(gunicorn), "--workers", str(self.workers), "--bind",
             f"{self.host}:{self.port}", "--timeout", "120", "--log-level", "warning",
             "server:create_app()"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with code {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the API did not become healthy at {self.url}")

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> "ApiServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
