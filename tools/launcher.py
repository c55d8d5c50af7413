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

While they run, the launcher watches them: a local database that stops is restarted
(at most ``DB_RESTARTS`` times in ``DB_RESTART_WINDOW_S``), and when the API or the UI
stops, or the database cannot be restarted, everything is stopped with an error and
exit status 1. Ctrl-C (SIGINT) or SIGTERM stops every process it started, in reverse
order, and kills whatever is left of each one's process group (a gunicorn worker stuck
in a request included).

``DATA_DIR`` is private to the user running it: the launcher and its children create
files with umask 077 (folders 0700, files 0600), and looser modes left from earlier
runs are tightened at start.
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

from sleeplab.ui_settings import (MONITOR_TOKEN_ENV, SIGN_IN_ENV, STATION_TOKEN_ENV, UI_TOKEN_ENV,
                                  UI_TOKEN_ENVS, is_loopback, sign_in_wanted)
from tools.api_process import gunicorn_command
from tools.local_mongo import PRIVATE_UMASK, LocalMongo, LocalMongoError, make_private
from tools.processes import describe_exit, pid_file_owner, stop_process, wait_http

#: The project folder: entry points, gunicorn.conf.py, the default data folder.
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
#: The tokens the first run creates: name -> role. In single-user mode the UI acts
#: with ``station`` at the bedside and ``monitor`` at the monitoring station.
LOCAL_TOKENS = {"admin": "admin", "monitor": "monitor", "station": "station"}
#: A local database that stops is restarted at most this often within the window.
DB_RESTARTS = 3
DB_RESTART_WINDOW_S = 600.0
#: How often the launcher checks that its children still run.
WATCH_INTERVAL_S = 0.5
#: How long a child gets to stop after SIGTERM before its whole process group is killed;
#: longer than gunicorn's graceful_timeout (gunicorn.conf.py), so requests can finish.
STOP_TIMEOUT_S = 15.0


def setting(name: str, default: str) -> str:
    return os.environ.get(name) or default


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


def check_ui_exposure(env: dict) -> bool:
    """Whether people sign in; refuses a UI beyond loopback without sign-in."""
    sign_in = sign_in_wanted(env)
    host = env.get("UI_HOST") or "127.0.0.1"
    if not sign_in and not is_loopback(host):
        raise RuntimeError(
            f"UI_HOST={host} is not a loopback address, and without sign-in anyone who "
            f"reaches the UI would act as the bedside station and the monitor. Set "
            f"{SIGN_IN_ENV}=1 (people sign in; add them with 'python -m sleeplab.api.accounts add'), "
            f"or keep UI_HOST=127.0.0.1 (single-user mode).")
    return sign_in


def configure_auth(env: dict, data_dir: Path) -> str:
    """Set the API's and the UI's token settings in ``env``; describe what was done."""
    sign_in = check_ui_exposure(env)
    if sign_in:
        for key in UI_TOKEN_ENVS:        # the UI acts with each person's own session
            env.pop(key, None)
        print("==> UI: people sign in (SLEEPLAB_SIGN_IN=1); manage them with "
              "'python -m sleeplab.api.accounts add|passwd|disable|list'")
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


def say(message: str, error: bool = False) -> None:
    """Print (errors to stderr); a closed terminal or pipe must not stop the clean-up."""
    try:
        print(message, file=sys.stderr if error else sys.stdout, flush=True)
    except OSError:  # BrokenPipeError when whoever read our output has gone
        pass


class RestartBudget:
    """At most ``limit`` restarts within any ``window_s`` seconds."""

    def __init__(self, limit: int = DB_RESTARTS, window_s: float = DB_RESTART_WINDOW_S):
        self.limit, self.window_s = limit, window_s
        self.times: list[float] = []

    def allow(self, now_s: float) -> bool:
        """Record a restart at ``now_s`` (monotonic seconds) if one is still allowed."""
        self.times = [t for t in self.times if now_s - t < self.window_s]
        if len(self.times) >= self.limit:
            return False
        self.times.append(now_s)
        return True


def clear_stale_api_pid_file(pid_file: Path) -> None:
    """Refuse to start beside a running API of this DATA_DIR; remove a stale pid file."""
    had_file = pid_file.exists()
    pid = pid_file_owner(pid_file)
    if pid is not None:
        raise RuntimeError(f"the API of an earlier run (gunicorn, pid {pid}) is still "
                           f"running from {pid_file.parent.parent}; stop it first "
                           f"(kill {pid})")
    if had_file:
        print(f"==> removed the stale pid file {pid_file} (its process is gone)")


def watch(database: LocalMongo | None, children: dict[str, subprocess.Popen]) -> int:
    """Watch the running system until a child stops for good; return the exit status.

    A stopped local database is restarted within :class:`RestartBudget`; any other
    stopped child, or a database that cannot be restarted, ends the watch with 1.
    ``poll()`` reaps each child that stops, so none is left a zombie.
    """
    budget = RestartBudget()
    while True:
        time.sleep(WATCH_INTERVAL_S)
        code = database.exit_code() if database is not None else None
        if code is not None:
            say(f"error: the local database (nx-27017) stopped unexpectedly "
                f"({describe_exit(code)}); see {database.log_file}", error=True)
            if not budget.allow(time.monotonic()):
                say(f"error: the local database stopped {DB_RESTARTS + 1} times within "
                    f"{DB_RESTART_WINDOW_S / 60:.0f} minutes; stopping everything",
                    error=True)
                return 1
            say(f"==> restarting the local database (restart {len(budget.times)} of at "
                f"most {DB_RESTARTS} within {DB_RESTART_WINDOW_S / 60:.0f} minutes)")
            database.start()
            say("==> local database running again; the API reconnects by itself")
        for name, child in children.items():
            if child.poll() is not None:
                say(f"error: the {name} stopped unexpectedly "
                    f"({describe_exit(child.returncode)}); stopping everything", error=True)
                return 1


def main() -> int:
    # Everything the launcher and its children write is private to this user.
    os.umask(PRIVATE_UMASK)
    data_dir = Path(setting("DATA_DIR", str(ROOT / "data"))).resolve()
    api_pid_file = data_dir / "run" / "gunicorn.pid"
    api_host = setting("API_HOST", "127.0.0.1")
    api_port = setting("API_PORT", "5000")
    ui_host = setting("UI_HOST", "127.0.0.1")
    ui_port = setting("UI_PORT", "8501")
    workers = setting("API_WORKERS", "2")
    # Threads per worker for the app: cheap reads (the monitor wall) interleave with uploads
    # instead of queueing behind them (benchmarks/bench_load.py: wall p50 845 -> 522 ms).
    threads = setting("API_THREADS", "4")

    env = dict(os.environ, API_HOST=api_host, API_PORT=api_port, API_WORKERS=workers,
               API_THREADS=threads)
    database: LocalMongo | None = None
    children: dict[str, subprocess.Popen] = {}
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
        if make_private(data_dir):
            print(f"==> {data_dir} was readable by other users; now private (folders "
                  f"0700, files 0600)")
        api_pid_file.parent.mkdir(mode=0o700, exist_ok=True)
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

        print(f"==> starting API (gunicorn -c gunicorn.conf.py, {workers} workers x "
              f"{threads} threads) on {api_host}:{api_port}")
        clear_stale_api_pid_file(api_pid_file)
        api = subprocess.Popen(
            gunicorn_command("--pid", str(api_pid_file)),
            cwd=ROOT, env={k: v for k, v in env.items() if k not in UI_TOKEN_ENVS},
            start_new_session=True)
        children["API"] = api
        api_url = f"http://{api_host}:{api_port}"
        wait_http(f"{api_url}/health", api, "API")
        api_pid_file.chmod(0o600)  # gunicorn writes it 0644 whatever the umask

        print(f"==> starting UI (Streamlit) on {ui_host}:{ui_port}")
        ui_env = dict(env, API_URL=setting("API_URL", api_url))
        for key in ("API_TOKEN", "API_TOKENS_FILE"):  # the UI needs its token only
            ui_env.pop(key, None)
        ui = subprocess.Popen(
            [str(BIN / "streamlit"), "run", "patient_streamlit.py",
             "--server.address", ui_host, "--server.port", ui_port,
             "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=ui_env, start_new_session=True)
        children["UI"] = ui
        ui_url = f"http://{ui_host}:{ui_port}"
        wait_http(f"{ui_url}/_stcore/health", ui, "UI")

        print()
        print("Sleep Lab Monitor is running:")
        print(f"  UI:       {ui_url}")
        print(f"  API:      {api_url}   (OpenAPI: {api_url}/api/openapi.json)")
        print(f"  Database: {env['MONGODB_URI']}")
        print(f"  Tokens:   {tokens}")
        print("Press Ctrl-C to stop.", flush=True)
        return watch(database, children)
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
        for child in reversed(children.values()):
            stop_process(child, STOP_TIMEOUT_S)
        if database is not None:
            database.stop()
        say("==> stopped")


if __name__ == "__main__":
    sys.exit(main())
