"""Run the whole Sleep Lab Monitor on one machine (what ``./run.sh`` calls).

Starts, in order, and waits until each one is healthy:

1. the local MongoDB-compatible database (nx-27017), unless ``MONGODB_URI`` is set;
2. the REST API under gunicorn;
3. the Streamlit UI.

Access control is on by default: unless ``API_TOKEN`` or ``API_TOKENS_FILE`` is set
(or ``SLEEPLAB_AUTH=off``), the first run writes local tokens to
``DATA_DIR/tokens.json`` (mode 0600) and later runs reuse them. The API gets the file
(``API_TOKENS_FILE``). The UI runs in single-user mode on loopback (no sign-in; the
``station`` token for bedside actions, the ``monitor`` token for monitor actions) or,
with ``SLEEPLAB_SIGN_IN=1``, people sign in and the UI holds no token. A UI bound to
any other address than loopback requires ``SLEEPLAB_SIGN_IN=1``.

Ctrl-C (SIGINT) or SIGTERM stops every process it started, in reverse order.
"""
from __future__ import annotations

import ipaddress
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
#: The tokens the first run creates: name -> role. In single-user mode the UI acts
#: with ``station`` at the bedside and ``monitor`` at the monitoring station.
LOCAL_TOKENS = {"admin": "admin", "monitor": "monitor", "station": "station"}
UI_TOKEN_ENV = "SLEEPLAB_API_TOKEN"
STATION_TOKEN_ENV, MONITOR_TOKEN_ENV = "SLEEPLAB_STATION_TOKEN", "SLEEPLAB_MONITOR_TOKEN"
#: Tokens only the UI gets (never the API's environment).
UI_TOKEN_ENVS = (UI_TOKEN_ENV, STATION_TOKEN_ENV, MONITOR_TOKEN_ENV)
SIGN_IN_ENV = "SLEEPLAB_SIGN_IN"


def setting(name: str, default: str) -> str:
    return os.environ.get(name) or default


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a listening address) is reachable from this computer only."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:           # a host name, or empty (= every interface)
        return False


def ensure_tokens(path: Path) -> tuple[Path, dict[str, str]]:
    """Create the local tokens file once (mode 0600); return it and the single-user
    UI's tokens (``station``, ``monitor``: name -> token)."""
    if not path.exists():
        tokens = [{"name": name, "role": role, "token": secrets.token_urlsafe(32)}
                  for name, role in LOCAL_TOKENS.items()]
        # O_EXCL + mode 0600: the file is never readable by others, not even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump({"tokens": tokens}, out, indent=2)
            out.write("\n")
        print(f"==> created API tokens in {path} ({', '.join(LOCAL_TOKENS)})")
    elif path.stat().st_mode & 0o077:
        path.chmod(0o600)
        print(f"==> {path} was readable by other users; now mode 0600")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["tokens"]
        ui = {e["name"]: e["token"] for e in entries
              if e.get("name") in ("station", "monitor") and "token" in e}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RuntimeError(f"{path} is not a tokens file the launcher wrote; fix or "
                           f"delete it") from None
    if len(ui) != 2:
        raise RuntimeError(f"{path} lacks the 'station' or 'monitor' token the UI uses; "
                           f"delete the file to get new tokens")
    return path, ui


def sign_in_wanted(env) -> bool:
    """``SLEEPLAB_SIGN_IN`` is on: people sign in to the UI (launcher and UI)."""
    return (env.get(SIGN_IN_ENV) or "").strip().lower() in ("1", "true", "yes", "on")


def check_ui_exposure(env: dict) -> bool:
    """Whether people sign in; refuses a UI beyond loopback without sign-in."""
    sign_in = sign_in_wanted(env)
    host = env.get("UI_HOST") or "127.0.0.1"
    if not sign_in and not is_loopback(host):
        raise RuntimeError(
            f"UI_HOST={host} is not a loopback address, and without sign-in anyone who "
            f"reaches the UI would act as the bedside station and the monitor. Set "
            f"{SIGN_IN_ENV}=1 (people sign in; add them with 'python accounts.py add'), "
            f"or keep UI_HOST=127.0.0.1 (single-user mode).")
    return sign_in


def configure_auth(env: dict, data_dir: Path) -> str:
    """Set the API's and the UI's token settings in ``env``; describe what was done."""
    sign_in = check_ui_exposure(env)
    if sign_in:
        for key in UI_TOKEN_ENVS:        # the UI acts with each person's own session
            env.pop(key, None)
        print("==> UI: people sign in (SLEEPLAB_SIGN_IN=1); manage them with "
              "'python accounts.py add|passwd|disable|list'")
    if env.get("SLEEPLAB_AUTH", "").lower() == "off":
        for key in ("API_TOKEN", "API_TOKENS_FILE", *UI_TOKEN_ENVS):
            env.pop(key, None)
        return "OFF (SLEEPLAB_AUTH=off): anyone who can reach the API can change pressures"
    if env.get("API_TOKEN") or env.get("API_TOKENS_FILE"):
        if not sign_in and not env.get(UI_TOKEN_ENV) and env.get("API_TOKEN"):
            env[UI_TOKEN_ENV] = env["API_TOKEN"]
        if not sign_in and not any(env.get(key) for key in UI_TOKEN_ENVS):
            print(f"warning: API_TOKENS_FILE is set but {UI_TOKEN_ENV} is not: the UI "
                  f"will be refused by the API", file=sys.stderr)
        return "your own (API_TOKEN / API_TOKENS_FILE)"
    path, ui_tokens = ensure_tokens(data_dir / "tokens.json")
    env["API_TOKENS_FILE"] = str(path)
    if not sign_in:
        if env.pop(UI_TOKEN_ENV, None):
            print(f"==> {UI_TOKEN_ENV} is ignored: the API uses the generated tokens, so "
                  f"the UI gets the generated ones (set API_TOKENS_FILE to use your own)")
        env[STATION_TOKEN_ENV] = ui_tokens["station"]
        env[MONITOR_TOKEN_ENV] = ui_tokens["monitor"]
        print("==> UI: single-user mode (loopback only, no sign-in): bedside actions as "
              "'station', monitor actions as 'monitor'")
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
            cwd=ROOT, env={k: v for k, v in env.items() if k not in UI_TOKEN_ENVS},
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
