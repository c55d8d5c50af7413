"""Run the whole Sleep Lab Monitor on one machine (what ``./run.sh`` calls).

Starts, in order, and waits until each one is healthy:

1. the local MongoDB-compatible database (nx-27017), unless ``MONGODB_URI`` is set;
2. the REST API under gunicorn;
3. the Streamlit UI.

Access control is on by default: unless ``API_TOKEN`` or ``API_TOKENS_FILE`` is set
(or ``SLEEPLAB_AUTH=off``), the first run writes local tokens to
``DATA_DIR/tokens.json`` (mode 0600) and later runs reuse them. The API gets the file
(``API_TOKENS_FILE``); the UI, which serves the patient and the monitoring tabs in
one process, gets the ``ui`` token (admin role) as ``SLEEPLAB_API_TOKEN``.

Ctrl-C (SIGINT) or SIGTERM stops every process it started, in reverse order.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from local_mongo import LocalMongo, LocalMongoError
from processes import stop_process, wait_http

ROOT = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
#: The tokens the first run creates: name -> role. ``ui`` is what the Streamlit UI uses.
LOCAL_TOKENS = {"admin": "admin", "monitor": "monitor", "station": "station", "ui": "admin"}
UI_TOKEN_ENV = "SLEEPLAB_API_TOKEN"


def setting(name: str, default: str) -> str:
    return os.environ.get(name) or default


def ensure_tokens(path: Path) -> tuple[Path, str]:
    """Create the local tokens file once (mode 0600); return it and the UI's token."""
    if not path.exists():
        tokens = [{"name": name, "role": role, "token": secrets.token_urlsafe(32)}
                  for name, role in LOCAL_TOKENS.items()]
        # O_EXCL + mode 0600: the file is never readable by others, not even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump({"tokens": tokens}, out, indent=2)
            out.write("\n")
        print(f"==> created API tokens in {path} (admin, monitor, station, ui)")
    elif path.stat().st_mode & 0o077:
        path.chmod(0o600)
        print(f"==> {path} was readable by other users; now mode 0600")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["tokens"]
        ui = next((e["token"] for e in entries if e.get("name") == "ui" and "token" in e),
                  None)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RuntimeError(f"{path} is not a tokens file the launcher wrote; fix or "
                           f"delete it") from None
    if ui is None:
        raise RuntimeError(f"{path} has no 'ui' token for the UI; add one or set "
                           f"{UI_TOKEN_ENV}")
    return path, ui


def configure_auth(env: dict, data_dir: Path) -> str:
    """Set the API's and the UI's token settings in ``env``; describe what was done."""
    if env.get("SLEEPLAB_AUTH", "").lower() == "off":
        for key in ("API_TOKEN", "API_TOKENS_FILE", UI_TOKEN_ENV):
            env.pop(key, None)
        return "OFF (SLEEPLAB_AUTH=off): anyone who can reach the API can change pressures"
    if env.get("API_TOKEN") or env.get("API_TOKENS_FILE"):
        if not env.get(UI_TOKEN_ENV) and env.get("API_TOKEN"):
            env[UI_TOKEN_ENV] = env["API_TOKEN"]
        if not env.get(UI_TOKEN_ENV):
            print(f"warning: API_TOKENS_FILE is set but {UI_TOKEN_ENV} is not: the UI "
                  f"will be refused by the API", file=sys.stderr)
        return "your own (API_TOKEN / API_TOKENS_FILE)"
    path, ui_token = ensure_tokens(data_dir / "tokens.json")
    env["API_TOKENS_FILE"] = str(path)
    if env.get(UI_TOKEN_ENV) not in (None, "", ui_token):
        print(f"==> {UI_TOKEN_ENV} is ignored: the API uses the generated tokens, so the UI "
              f"gets the generated 'ui' token (set API_TOKENS_FILE to use your own)")
    env[UI_TOKEN_ENV] = ui_token
    return f"{path}  (mode 0600; send 'Authorization: Bearer <token>')"


def say(message: str) -> None:
    """Print during shutdown; a closed terminal or pipe must not stop the clean-up."""
    try:
        print(message, flush=True)
    except OSError:  # BrokenPipeError when whoever read our output has gone
        pass


def main() -> int:
    data_dir = Path(setting("DATA_DIR", str(ROOT / "data"))).resolve()
    run_dir = data_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    api_host = setting("API_HOST", "127.0.0.1")
    api_port = setting("API_PORT", "5000")
    ui_host = setting("UI_HOST", "127.0.0.1")
    ui_port = setting("UI_PORT", "8501")
    workers = setting("API_WORKERS", "2")
    # Threads let cheap reads (the monitor wall) interleave with uploads instead of
    # queueing behind them (benchmarks/bench_load.py: wall p50 845 -> 522 ms under load).
    threads = setting("API_THREADS", "4")

    env = dict(os.environ)
    database: LocalMongo | None = None
    children: list[subprocess.Popen] = []
    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    # Handle SIGINT explicitly too: a shell starts background jobs with SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler, so Ctrl-C/kill -INT would do nothing.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        tokens = configure_auth(env, data_dir)
        if os.environ.get("MONGODB_URI"):
            print("==> using the database at MONGODB_URI (local database not started)")
        else:
            database = LocalMongo(data_dir=data_dir / "mongo",
                                  port=int(setting("LOCAL_DB_PORT", "27017")))
            print(f"==> starting local database nx-27017 on port {database.port} "
                  f"(data in {database.data_dir})")
            database.start()
            env["MONGODB_URI"] = database.uri()

        print(f"==> starting API (gunicorn, {workers} workers x {threads} threads) on "
              f"{api_host}:{api_port}")
        api = subprocess.Popen(
            [str(BIN / "gunicorn"), "--workers", workers, "--threads", threads,
             "--bind", f"{api_host}:{api_port}", "--pid", str(run_dir / "gunicorn.pid"), "--access-logfile", "-",
             "--timeout", "120", "server:create_app()"],
            cwd=ROOT, env={k: v for k, v in env.items() if k != UI_TOKEN_ENV},
            start_new_session=True)
        children.append(api)
        api_url = f"http://{api_host}:{api_port}"
        wait_http(f"{api_url}/health", api, "API")

        print(f"==> starting UI (Streamlit) on {ui_host}:{ui_port}")
        ui_env = dict(env, API_URL=setting("API_URL", api_url))
        for key in ("API_TOKEN", "API_TOKENS_FILE"):  # the UI needs its token only
            ui_env.pop(key, None)
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
        print(f"  Tokens:   {tokens}")
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
        # A second Ctrl-C or a SIGTERM during shutdown must not orphan children.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        say("\n==> stopping")
        for child in reversed(children):
            stop_process(child)
        if database is not None:
            database.stop()
        say("==> stopped")


if __name__ == "__main__":
    sys.exit(main())
