"""Run the API under gunicorn in a child process (integration tests and benchmarks).

The launcher (``tools/launcher.py``) and the container start gunicorn with the same
configuration file (``gunicorn_command``: ``gunicorn --config gunicorn.conf.py``); here
it gets ``MONGODB_URI`` and a loopback port in the environment, no access log and
warnings only. Unlike the launcher it writes no pid file and starts no database or UI.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tools.local_mongo import free_port
from tools.processes import stop_process, wait_http

#: The project folder (gunicorn runs there).
ROOT = Path(__file__).resolve().parents[1]
#: The one gunicorn configuration (worker class, timeouts, app) of every deployment.
GUNICORN_CONF = ROOT / "gunicorn.conf.py"


def gunicorn_command(*extra: str, root: Path = ROOT) -> list[str]:
    """The gunicorn command line of every deployment; ``extra`` adds e.g. ``--pid``.

    ``root`` is the checkout whose configuration file is used (run gunicorn there)."""
    return [str(Path(sys.executable).with_name("gunicorn")), "--config",
            str(root / GUNICORN_CONF.name), *extra]


@dataclass
class ApiServer:
    mongodb_uri: str
    workers: int = 2
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    extra_env: dict = field(default_factory=dict)
    #: The checkout served (benchmarks compare two): its server.py and gunicorn.conf.py.
    root: Path = ROOT
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> "ApiServer":
        env = dict(os.environ, MONGODB_URI=self.mongodb_uri, API_HOST=self.host,
                   API_PORT=str(self.port), API_WORKERS=str(self.workers),
                   API_ACCESS_LOG="", API_LOG_LEVEL="warning", **self.extra_env)
        self.process = subprocess.Popen(gunicorn_command(root=self.root), cwd=self.root, env=env,
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
