"""The quick-start launcher: whole system up, healthy, Ctrl-C stops all, data kept;
a crashed database restarted, a dead API or UI stops all loudly, stale pid files and
stuck workers handled, the data folder private."""
import json
import os
import queue
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pymongo
import pytest
import requests

from tools import processes
from tools.local_mongo import free_port

ROOT = Path(__file__).resolve().parents[1]


def start_launcher(env, ignore_sigint=False):
    def preexec():
        if ignore_sigint:  # how a shell starts a background job (cmd &)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    proc = subprocess.Popen([sys.executable, "-m", "tools.launcher"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=preexec)
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
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the launcher's own clean-up, so a failing test leaves no processes
        out, _ = proc.communicate(timeout=60)
        raise AssertionError("the launcher ignored SIGINT:\n" + out) from None
    return out


@pytest.mark.slow
def test_closed_output_does_not_orphan_children(tmp_path):
    """Whoever read the launcher's output has gone (closed terminal): SIGTERM still
    stops every process it started."""
    env = dict(os.environ, DATA_DIR=str(tmp_path), SLEEPLAB_AUTH="off",
               **{name: str(free_port()) for name in ("LOCAL_DB_PORT", "API_PORT", "UI_PORT")})
    env.pop("MONGODB_URI", None)
    proc, _ = start_launcher(env)
    proc.stdout.close()  # the reading end is gone: the next print raises BrokenPipeError
    proc.terminate()
    proc.wait(timeout=60)
    deadline = time.monotonic() + 15
    while processes_using(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_using(tmp_path) == []


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


def printed_tokens(lines):
    """The tokens file the launcher printed, and its tokens by name."""
    match = re.search(r"Tokens:\s+(\S+)", "".join(lines))
    assert match, "the launcher must print where the tokens are"
    path = Path(match.group(1))
    return path, {e["name"]: e for e in json.loads(path.read_text())["tokens"]}


def assert_default_install_is_protected(api, tokens):
    assert {e["role"] for e in tokens.values()} == {"admin", "monitor", "station"}
    body = {"mrn": 5, "room": 2, "name": "Quick Start"}
    assert requests.post(f"{api}/api/v1/patients", json=body, timeout=10).status_code == 401
    assert requests.get(f"{api}/new_cpap_pressure/2/10", timeout=10).status_code == 401
    station = {"Authorization": f"Bearer {tokens['station']['token']}"}
    assert requests.post(f"{api}/api/v1/patients", json=body, headers=station,
                         timeout=10).status_code in (200, 201)
    monitor = {"Authorization": f"Bearer {tokens['monitor']['token']}"}
    assert requests.put(f"{api}/api/v1/rooms/2/pressure", json={"pressure_cmh2o": 10, "mrn": 5},
                        headers=station, timeout=10).status_code == 403
    assert requests.put(f"{api}/api/v1/rooms/2/pressure", json={"pressure_cmh2o": 10, "mrn": 5},
                        headers=monitor, timeout=10).status_code == 201
    trail = requests.get(f"{api}/api/v1/rooms/2/audit", headers=monitor, timeout=10).json()
    assert trail["entries"][0]["who"] == {"name": "monitor", "role": "monitor"}


@pytest.mark.slow
def test_run_stop_run_keeps_data_and_leaves_no_processes(tmp_path):
    ports = {name: str(free_port()) for name in ("LOCAL_DB_PORT", "API_PORT", "UI_PORT")}
    env = dict(os.environ, DATA_DIR=str(tmp_path), **ports)
    env.pop("MONGODB_URI", None)
    api = f"http://127.0.0.1:{ports['API_PORT']}"
    db_uri = f"mongodb://127.0.0.1:{ports['LOCAL_DB_PORT']}/sleeplab"

    proc, lines = start_launcher(env)
    try:
        assert f"UI:       http://127.0.0.1:{ports['UI_PORT']}" in "".join(lines)
        tokens_path, tokens = printed_tokens(lines)
        assert tokens_path.parent == tmp_path and tokens_path.stat().st_mode & 0o777 == 0o600
        assert_default_install_is_protected(api, tokens)
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

    # Second run as a background job (SIGINT ignored at start): kill -INT must still stop it.
    proc, lines = start_launcher(env, ignore_sigint=True)
    try:
        assert printed_tokens(lines)[1] == tokens  # the second run reuses the tokens
        client = pymongo.MongoClient(db_uri)
        kept = client.get_default_database().launcher_check.find_one({}, {"_id": 0})
        client.close()
        assert kept == {"kept": True}
    finally:
        out = stop_launcher(proc)
    assert "==> stopped" in out
    assert processes_using(tmp_path) == []


@pytest.mark.slow
def test_occupied_port_gives_a_clear_error_and_cleans_up(tmp_path):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = dict(os.environ, DATA_DIR=str(tmp_path), LOCAL_DB_PORT=str(free_port()),
                   API_PORT=str(busy.getsockname()[1]), UI_PORT=str(free_port()))
        env.pop("MONGODB_URI", None)
        result = subprocess.run([sys.executable, "-m", "tools.launcher"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "error: API" in result.stderr
    assert processes_using(tmp_path) == []


def test_configure_auth_respects_the_users_own_settings(tmp_path):
    from tools import launcher
    env = {"API_TOKEN": "my-own-admin-token-0123"}
    assert "your own" in launcher.configure_auth(env, tmp_path)
    assert env[launcher.UI_TOKEN_ENV] == "my-own-admin-token-0123"
    assert "API_TOKENS_FILE" not in env and not (tmp_path / "tokens.json").exists()

    env = {"SLEEPLAB_AUTH": "off", "API_TOKEN": "x" * 20}
    assert "OFF" in launcher.configure_auth(env, tmp_path)
    assert "API_TOKEN" not in env and not (tmp_path / "tokens.json").exists()


def test_generated_tokens_are_private_strong_and_kept(tmp_path):
    from tools import launcher
    from sleeplab.api import auth
    env = {}
    launcher.configure_auth(env, tmp_path)
    path = Path(env["API_TOKENS_FILE"])
    assert path.stat().st_mode & 0o777 == 0o600
    entries = auth.parse_tokens(path.read_text())  # the API accepts the file
    assert {e.name: e.role for e in entries} == launcher.LOCAL_TOKENS
    assert "admin" not in {e.role for e in entries if e.name in ("station", "monitor")}
    tokens = {e["name"]: e["token"] for e in json.loads(path.read_text())["tokens"]}
    assert len(set(tokens.values())) == 3 and min(map(len, tokens.values())) >= 40
    # Single-user mode: the UI acts as the station at the bedside, as the monitor at
    # the monitoring station; it holds no admin token.
    assert env[launcher.STATION_TOKEN_ENV] == tokens["station"]
    assert env[launcher.MONITOR_TOKEN_ENV] == tokens["monitor"]
    assert launcher.UI_TOKEN_ENV not in env
    path.chmod(0o644)
    again = {launcher.UI_TOKEN_ENV: "left-over-from-docker-0123"}  # not in the file
    launcher.configure_auth(again, tmp_path)
    assert launcher.UI_TOKEN_ENV not in again
    assert again[launcher.MONITOR_TOKEN_ENV] == tokens["monitor"]
    assert path.stat().st_mode & 0o777 == 0o600


def test_tokens_file_of_an_earlier_version_still_works(tmp_path):
    """A file written before single-user mode (with its admin 'ui' token) is reused."""
    from tools import launcher
    old = {"tokens": [{"name": name, "role": role, "token": f"{name}-token-0123456789abcdef"}
                      for name, role in (("admin", "admin"), ("monitor", "monitor"),
                                         ("station", "station"), ("ui", "admin"))]}
    (tmp_path / "tokens.json").write_text(json.dumps(old))
    (tmp_path / "tokens.json").chmod(0o600)
    env = {}
    launcher.configure_auth(env, tmp_path)
    assert env[launcher.STATION_TOKEN_ENV] == "station-token-0123456789abcdef"
    assert env[launcher.MONITOR_TOKEN_ENV] == "monitor-token-0123456789abcdef"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "ward-pc.local"])
def test_ui_beyond_loopback_needs_sign_in(tmp_path, host, capsys):
    from tools import launcher
    for auth_setting in ({}, {"SLEEPLAB_AUTH": "off"}, {"API_TOKEN": "my-own-admin-token-0123"}):
        with pytest.raises(RuntimeError, match=f"UI_HOST={host} is not a loopback address.*"
                                               "SLEEPLAB_SIGN_IN=1"):
            launcher.configure_auth({"UI_HOST": host, **auth_setting}, tmp_path)
    assert not (tmp_path / "tokens.json").exists()
    env = {"UI_HOST": host, "SLEEPLAB_SIGN_IN": "1",
           launcher.UI_TOKEN_ENV: "left-over-admin-token-0123"}
    launcher.configure_auth(env, tmp_path)
    assert "people sign in" in capsys.readouterr().out
    assert not set(launcher.UI_TOKEN_ENVS) & set(env)   # the UI holds no token
    assert Path(env["API_TOKENS_FILE"]).exists()         # the API is still protected


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("localhost", True),
                                           ("::1", True), ("[::1]", True),
                                           ("127.0.0.2", True), ("0.0.0.0", False),
                                           ("10.0.0.1", False), ("", False)])
def test_is_loopback(host, loopback):
    from tools import launcher
    assert launcher.is_loopback(host) is loopback


def test_launcher_refuses_a_public_ui_without_sign_in(tmp_path):
    env = dict(os.environ, DATA_DIR=str(tmp_path), UI_HOST="0.0.0.0",
               LOCAL_DB_PORT=str(free_port()), API_PORT=str(free_port()),
               UI_PORT=str(free_port()))
    env.pop("MONGODB_URI", None)
    env.pop("SLEEPLAB_SIGN_IN", None)
    proc = subprocess.Popen([sys.executable, "-m", "tools.launcher"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # it started everything: its own clean-up stops it
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert "error: UI_HOST=0.0.0.0 is not a loopback address" in err
    assert "starting" not in out                          # nothing was started
    assert processes_using(tmp_path) == []


# -- watching the children, stale pid files, stuck workers, private data (issue #11) --
def launcher_env(tmp_path, **extra):
    env = dict(os.environ, DATA_DIR=str(tmp_path / "data"), SLEEPLAB_AUTH="off",
               **{name: str(free_port()) for name in ("LOCAL_DB_PORT", "API_PORT", "UI_PORT")},
               **extra)
    env.pop("MONGODB_URI", None)
    return env


class Followed:
    """A started launcher whose output is read by a thread, line by line."""

    def __init__(self, proc, lines):
        self.proc, self.lines, self._queue = proc, list(lines), queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.children = child_pids(proc.pid)  # database, API (gunicorn master), UI

    def _read(self):
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text, timeout_s=90.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"the launcher never printed {text!r}:\n" + "".join(self.lines))

    def output(self, timeout_s=10.0):
        """Everything printed so far; waits for the end of the output for ``timeout_s``
        (a process left behind that holds the pipe would keep it open)."""
        try:
            while (line := self._queue.get(timeout=timeout_s)) is not None:
                self.lines.append(line)
        except queue.Empty:
            pass
        return "".join(self.lines)

    def stop(self, timeout_s=60):
        """Ctrl-C; the launcher's exit status and output."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(timeout=60)
            raise AssertionError("the launcher ignored SIGINT:\n" + self.output()) from None
        return self.proc.returncode, self.output()


def child_pids(pid):
    try:
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except FileNotFoundError:
        return set()


def in_groups(groups):
    """Live (not zombie) processes whose process group is one of ``groups``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) in groups:
            found.append(int(entry.name))
    return found


def assert_nothing_left(followed):
    """No process of the launcher's children's groups is left (any left is killed)."""
    assert followed.children, "the launcher had started no children"
    deadline = time.monotonic() + 10
    while in_groups(followed.children) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:120]
            for pid in in_groups(followed.children)}
    for pid in left:  # a failing test leaves nothing running either
        os.kill(pid, signal.SIGKILL)
    assert left == {}, "processes of the launcher's children left"


def pid_in(path):
    return int(Path(path).read_text().strip())


@pytest.mark.slow
def test_private_data_folder_and_a_stale_pid_file_of_another_process(tmp_path):
    """``sleep 3600 & echo $! > data/run/gunicorn.pid; ./run.sh`` starts; modes are made
    private; the unrelated process is left alone."""
    data = tmp_path / "data"
    (data / "run").mkdir(parents=True)
    (data / "mongo").mkdir()
    (data / "notes.txt").write_text("left by hand")
    for path, mode in ((data, 0o755), (data / "run", 0o755), (data / "mongo", 0o755),
                       (data / "notes.txt", 0o644)):
        path.chmod(mode)
    other = subprocess.Popen(["sleep", "3600"])
    (data / "run" / "gunicorn.pid").write_text(f"{other.pid}\n")
    try:
        proc, lines = start_launcher(launcher_env(tmp_path))
        try:
            out = "".join(lines)
            assert f"{data} was readable by other users; now private" in out
            assert "removed the stale pid file" in out
            found = {str(p.relative_to(data)): stat.S_IMODE(p.stat().st_mode)
                     for p in [data, *data.rglob("*")] if not p.is_socket()}
            assert {"run/gunicorn.pid", "mongo/nx-27017.pid", "mongo/nx-27017.log",
                    "notes.txt"} <= set(found)
            assert any(name.startswith("mongo/db/") for name in found)
            assert {n: oct(m) for n, m in found.items() if m & 0o077} == {}
            assert all(found[n] == 0o700 for n in found if (data / n).is_dir())
            api_pid = pid_in(data / "run" / "gunicorn.pid")
            assert api_pid != other.pid and "gunicorn" in processes.command_line(api_pid)
        finally:
            out = stop_launcher(proc)
        assert proc.returncode == 0, out
        assert other.poll() is None, "the launcher must not touch an unrelated process"
    finally:
        other.kill()
        other.wait()


@pytest.mark.slow
def test_a_crashed_database_is_restarted_and_reaped(tmp_path):
    env = launcher_env(tmp_path)
    api = f"http://127.0.0.1:{env['API_PORT']}"
    db_uri = f"mongodb://127.0.0.1:{env['LOCAL_DB_PORT']}/sleeplab"
    launcher = Followed(*start_launcher(env))
    try:
        client = pymongo.MongoClient(db_uri, serverSelectionTimeoutMS=20_000)
        client.get_default_database().kept.insert_one({"before": "crash"})
        crashed = pid_in(tmp_path / "data" / "mongo" / "nx-27017.pid")
        os.kill(crashed, signal.SIGKILL)
        launcher.wait_for("the local database (nx-27017) stopped unexpectedly "
                          "(killed by SIGKILL)")
        launcher.wait_for("local database running again")
        assert not Path(f"/proc/{crashed}").exists(), "the crashed database was not reaped"
        deadline = time.monotonic() + 30
        while requests.get(f"{api}/health", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "the API did not reconnect"
            time.sleep(0.5)
        assert client.get_default_database().kept.find_one({}, {"_id": 0}) == {
            "before": "crash"}
        client.close()
    finally:
        status, out = launcher.stop()
    assert status == 0, out
    assert_nothing_left(launcher)


@pytest.mark.slow
def test_ctrl_c_leaves_no_worker_stuck_in_a_request(tmp_path):
    env = launcher_env(tmp_path)
    launcher = Followed(*start_launcher(env))
    in_flight = socket.create_connection(("127.0.0.1", int(env["API_PORT"])))
    try:
        # A request in flight, and the workers stuck (they no longer react to signals).
        in_flight.sendall(b"POST /api/v1/patients HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Length: 1000\r\n\r\n{")
        for worker in child_pids(pid_in(tmp_path / "data" / "run" / "gunicorn.pid")):
            os.kill(worker, signal.SIGSTOP)
    finally:
        status, out = launcher.stop()
        in_flight.close()
    assert status == 0, out
    assert "==> stopped" in out
    assert_nothing_left(launcher)


@pytest.mark.slow
def test_a_dead_api_stops_everything_loudly(tmp_path):
    launcher = Followed(*start_launcher(launcher_env(tmp_path)))
    try:
        os.kill(pid_in(tmp_path / "data" / "run" / "gunicorn.pid"), signal.SIGKILL)
        launcher.wait_for("error: the API stopped unexpectedly (killed by SIGKILL); "
                          "stopping everything")
        launcher.proc.wait(timeout=60)
    finally:
        status, out = launcher.stop()
    assert status == 1, out
    assert "==> stopped" in out
    assert_nothing_left(launcher)


def test_database_restarts_are_bounded():
    from tools import launcher
    budget = launcher.RestartBudget(limit=3, window_s=600)
    assert [budget.allow(t) for t in (0, 10, 20, 30)] == [True, True, True, False]
    assert budget.allow(605) is True  # the first restart left the window
    assert budget.allow(606) is False


def test_stop_process_kills_what_is_left_of_the_group():
    """A child that ignores SIGTERM, with a grandchild: neither survives stop_process."""
    proc = subprocess.Popen(["bash", "-c", "trap '' TERM; sleep 3600 & wait"],
                            start_new_session=True)
    time.sleep(0.5)
    grandchildren = child_pids(proc.pid)
    assert grandchildren
    processes.stop_process(proc, timeout_s=0.5)
    deadline = time.monotonic() + 5
    while in_groups({proc.pid}) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert in_groups({proc.pid}) == []


@pytest.mark.parametrize("returncode, text", [(0, "exit code 0"), (3, "exit code 3"),
                                              (-9, "killed by SIGKILL"),
                                              (-15, "killed by SIGTERM")])
def test_describe_exit(returncode, text):
    assert processes.describe_exit(returncode) == text
