"""The quick-start launcher: whole system up, healthy, Ctrl-C stops all, data kept."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pymongo
import requests

from local_mongo import free_port

ROOT = Path(__file__).resolve().parents[1]


def start_launcher(env):
    proc = subprocess.Popen([sys.executable, str(ROOT / "launcher.py")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        lines.append(line)
        if "Press Ctrl-C to stop" in line:
            return proc, lines
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise AssertionError("launcher did not come up:\n" + "".join(lines))


def stop_launcher(proc):
    proc.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal sends
    out, _ = proc.communicate(timeout=60)
    return out


def processes_using(path):
    """Pids of live processes whose command line mentions ``path``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(path) in cmdline and int(entry.name) != os.getpid():
                found.append(int(entry.name))
    return found


def test_run_stop_run_keeps_data_and_leaves_no_processes(tmp_path):
    ports = {name: str(free_port()) for name in ("LOCAL_DB_PORT", "API_PORT", "UI_PORT")}
    env = dict(os.environ, DATA_DIR=str(tmp_path), **ports)
    env.pop("MONGODB_URI", None)
    api = f"http://127.0.0.1:{ports['API_PORT']}"
    db_uri = f"mongodb://127.0.0.1:{ports['LOCAL_DB_PORT']}/sleeplab"

    proc, lines = start_launcher(env)
    try:
        assert f"UI:       http://127.0.0.1:{ports['UI_PORT']}" in "".join(lines)
        assert requests.get(f"{api}/health", timeout=5).json()["database"] == "ok"
        assert requests.get(f"http://127.0.0.1:{ports['UI_PORT']}/_stcore/health",
                            timeout=5).status_code == 200
        client = pymongo.MongoClient(db_uri)
        client.get_default_database().launcher_check.insert_one({"kept": True})
        client.close()
    finally:
        out = stop_launcher(proc)
    assert proc.returncode == 0, out
    assert "==> stopped" in out
    assert processes_using(tmp_path) == []
    assert not list(tmp_path.rglob("*.pid")), "stale pid files would block the next start"

    proc, _ = start_launcher(env)
    try:
        client = pymongo.MongoClient(db_uri)
        kept = client.get_default_database().launcher_check.find_one({}, {"_id": 0})
        client.close()
        assert kept == {"kept": True}
    finally:
        stop_launcher(proc)
    assert processes_using(tmp_path) == []


def test_occupied_port_gives_a_clear_error_and_cleans_up(tmp_path):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = dict(os.environ, DATA_DIR=str(tmp_path), LOCAL_DB_PORT=str(free_port()),
                   API_PORT=str(busy.getsockname()[1]), UI_PORT=str(free_port()))
        env.pop("MONGODB_URI", None)
        result = subprocess.run([sys.executable, str(ROOT / "launcher.py")], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "error: API" in result.stderr
    assert processes_using(tmp_path) == []
