"""Start and stop a local MongoDB-wire-compatible server (``nx-27017``).

The quick start (``tools/launcher.py``) and the integration-test fixture both use this
module, so the local database is started the same way everywhere: one port, one
data directory, one pid file and one log file per instance.

nx-27017 speaks the MongoDB wire protocol and stores data in SQLite files under
its data directory, so data survives restarts. Production uses MongoDB itself
(see ``docker-compose.yml``); nothing in the application depends on this module.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pymongo

from tools.processes import describe_exit, pid_file_owner, stop_process

#: How long to wait for the server to answer ``ping`` after start-up.
START_TIMEOUT_S = 30.0
#: File-mode creation mask of the database server: what it writes (SQLite files, pid and
#: log files) is readable by the service user only (0600 files, 0700 folders).
PRIVATE_UMASK = 0o077


class LocalMongoError(RuntimeError):
    """The local database server could not be started."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _nx_executable() -> str:
    # Prefer the script installed next to this interpreter (the project venv),
    # so the launcher works even when the venv is not activated.
    candidate = Path(sys.executable).with_name("nx-27017")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nx-27017")
    if not found:
        raise LocalMongoError(
            "nx-27017 is not installed; run ./run.sh or pip install -r requirements.txt"
        )
    return found


def make_private(folder: Path) -> int:
    """Create ``folder`` (mode 0700) or take group and other access away from everything
    in it (folders 0700, files 0600 or 0700); return how many entries were tightened."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    tightened = 0
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue  # chmod would change the target, which may be anywhere
        mode = path.stat().st_mode
        if mode & 0o077:
            path.chmod(0o700 if path.is_dir() else mode & 0o700)
            tightened += 1
    return tightened


def ping(uri: str, timeout_s: float = 1.0) -> bool:
    """Return True when a MongoDB-protocol server at ``uri`` answers ``ping``."""
    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=int(timeout_s * 1000),
                                 connectTimeoutMS=int(timeout_s * 1000))
    try:
        client.admin.command("ping")
        return True
    except pymongo.errors.PyMongoError:
        return False
    finally:
        client.close()


@dataclass
class LocalMongo:
    """One nx-27017 instance: its port, data directory, pid and log files."""

    data_dir: Path
    port: int
    host: str = "127.0.0.1"
    process: subprocess.Popen | None = None

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "nx-27017.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "nx-27017.log"

    def uri(self, database: str = "sleeplab") -> str:
        return f"mongodb://{self.host}:{self.port}/{database}"

    def _clear_stale_pid_file(self) -> None:
        # A pid file left by a killed instance must not block the next start; one of an
        # instance still running on this data directory must.
        pid = pid_file_owner(self.pid_file)
        if pid is not None:
            raise LocalMongoError(
                f"another nx-27017 (pid {pid}) is using {self.data_dir}; stop it first"
            )

    def start(self, timeout_s: float = START_TIMEOUT_S) -> "LocalMongo":
        """Start the server in the foreground of a child process and wait for ``ping``.

        The data directory is private to the service user (see :func:`make_private`).
        """
        if make_private(self.data_dir):
            print(f"==> {self.data_dir} was readable by other users; now private "
                  f"(folders 0700, files 0600)")
        self._clear_stale_pid_file()
        cmd = [
            _nx_executable(),
            "--data-dir", str(self.data_dir / "db"),
            "--host", self.host,
            "-p", str(self.port),
            "--pid-file", str(self.pid_file),
            "--log-file", str(self.log_file),
        ]
        self.process = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, umask=PRIVATE_UMASK,
            start_new_session=True,  # Ctrl-C in a terminal reaches only the launcher
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LocalMongoError(
                    f"nx-27017 stopped ({describe_exit(self.process.returncode)}); "
                    f"see {self.log_file}"
                )
            if ping(self.uri(), timeout_s=0.5):
                return self
            time.sleep(0.1)
        self.stop()
        raise LocalMongoError(f"nx-27017 did not answer within {timeout_s:.0f} s; see {self.log_file}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its pid file."""
        proc, self.process = self.process, None
        stop_process(proc, timeout_s)
        self.pid_file.unlink(missing_ok=True)

    def exit_code(self) -> int | None:
        """The server's exit code once it has stopped (reaping it), else None."""
        return None if self.process is None else self.process.poll()

    def kill(self) -> None:
        """Kill the server with SIGKILL (crash tests); the pid file stays behind."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def __enter__(self) -> "LocalMongo":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
