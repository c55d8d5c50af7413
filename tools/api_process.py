"""Run the API under gunicorn in a child process (integration tests and benchmarks).

The same server as the quick start (``launcher.py``) and the container: ``gunicorn -c
gunicorn.conf.py`` with ``MONGODB_URI`` in the environment, bound to a loopback port.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from local_mongo import free_port
from processes import stop_process, wait_http

ROOT = Path(__file__).resolve().parent
#: The one gunicorn configuration (worker class, timeouts, app) of every deployment.
GUNICORN_CONF = ROOT / "gunicorn.conf.py"


def gunicorn_command(*extra: str) -> list[str]:
    """The gunicorn command line of every deployment; ``extra`` adds e.g. ``--pid``."""
    return [str(Path(sys.executable).with_name("gunicorn")), "--config", str(GUNICORN_CONF),
            *extra]


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
        env = dict(os.environ, MONGODB_URI=self.mongodb_uri, API_HOST=self.host,
                   API_PORT=str(self.port), API_WORKERS=str(self.workers),
                   API_ACCESS_LOG="", API_LOG_LEVEL="warning", **self.extra_env)
        self.process = subprocess.Popen(gunicorn_command(), cwd=ROOT, env=env,
                                        stdout=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_http(f"{self.url}/health", self.process, "gunicorn", timeout_s, poll_s=0.1)
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        proc, self.process = self.process, None
        stop_process(proc, timeout_s)

    def __enter__(self) -> "ApiServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
