"""Run the whole Sleep Lab Monitor on one machine (what ``./run.sh`` calls).

Starts, in order, and waits until each one is healthy:

1. the local MongoDB-compatible database (nx-27017), unless ``MONGODB_URI`` is set;
2. the REST API under gunicorn;
3. the Streamlit UI.

Ctrl-C (SIGINT) or SIGTERM stops every process it started, in reverse order.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from local_mongo import LocalMongo, LocalMongoError

ROOT = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def setting(name: str, default: str) -> str:
    return os.environ.get(name) or default


def wait_http(url: str, proc: subprocess.Popen, what: str, timeout_s: float = 60.0) -> None:
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
        time.sleep(0.25)
    raise RuntimeError(f"{what} did not become healthy at {url} within {timeout_s:.0f} s")


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    data_dir = Path(setting("DATA_DIR", str(ROOT / "data"))).resolve()
    run_dir = data_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    api_host = setting("API_HOST", "127.0.0.1")
    api_port = setting("API_PORT", "5000")
    ui_host = setting("UI_HOST", "127.0.0.1")
    ui_port = setting("UI_PORT", "8501")
    workers = setting("API_WORKERS", "2")

    env = dict(os.environ)
    database: LocalMongo | None = None
    children: list[subprocess.Popen] = []
    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        if os.environ.get("MONGODB_URI"):
            print(f"==> using the database at MONGODB_URI (local database not started)")
        else:
            database = LocalMongo(data_dir=data_dir / "mongo",
                                  port=int(setting("LOCAL_DB_PORT", "27017")))
            print(f"==> starting local database nx-27017 on port {database.port} "
                  f"(data in {database.data_dir})")
            database.start()
            env["MONGODB_URI"] = database.uri()

        print(f"==> starting API (gunicorn, {workers} workers) on {api_host}:{api_port}")
        api = subprocess.Popen(
            [str(BIN / "gunicorn"), "--workers", workers, "--bind", f"{api_host}:{api_port}",
             "--pid", str(run_dir / "gunicorn.pid"), "--access-logfile", "-",
             "--timeout", "120", "server:create_app()"],
            cwd=ROOT, env=env, start_new_session=True)
        children.append(api)
        api_url = f"http://{api_host}:{api_port}"
        wait_http(f"{api_url}/health", api, "API")

        print(f"==> starting UI (Streamlit) on {ui_host}:{ui_port}")
        ui_env = dict(env, API_URL=setting("API_URL", api_url))
        ui = subprocess.Popen(
            [str(BIN / "streamlit"), "run", "patient_streamlit.py",
             "--server.address", ui_host, "--server.port", ui_port,
             "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=ui_env, start_new_session=True)
        children.append(ui)
        ui_url = f"http://{ui_host}:{ui_port}"
        wait_http(f"{ui_url}/_stcore/health", ui, "UI")

        print()
        print("Sleep Lab Monitor is running:")
        print(f"  UI:       {ui_url}")
        print(f"  API:      {api_url}   (OpenAPI: {api_url}/api/openapi.json)")
        print(f"  Database: {env['MONGODB_URI']}")
        print("Press Ctrl-C to stop.", flush=True)
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        dead = [c for c in children if c.poll() is not None]
        print(f"error: a process stopped unexpectedly (exit code {dead[0].returncode})",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except (LocalMongoError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan children
        print("\n==> stopping", flush=True)
        for child in reversed(children):
            stop_process(child)
        if database is not None:
            database.stop()
        print("==> stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
