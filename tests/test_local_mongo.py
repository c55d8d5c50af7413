"""The local database helper: real nx-27017 over TCP, data kept across restarts."""
import stat
import subprocess

import pymongo
import pytest

from tools.local_mongo import LocalMongo, LocalMongoError, free_port, make_private, ping


@pytest.mark.slow
def test_data_survives_restart(tmp_path):
    server = LocalMongo(data_dir=tmp_path, port=free_port())
    with server:
        client = pymongo.MongoClient(server.uri())
        client.get_default_database().patients.insert_one({"mrn": 7, "name": "Ada"})
        client.close()
        assert server.pid_file.exists()
    assert not server.pid_file.exists()
    assert not ping(server.uri(), timeout_s=0.3)
    with server:
        client = pymongo.MongoClient(server.uri())
        doc = client.get_default_database().patients.find_one({"mrn": 7}, {"_id": 0})
        client.close()
    assert doc == {"mrn": 7, "name": "Ada"}


@pytest.mark.slow
def test_stale_pid_file_does_not_block_start(tmp_path):
    server = LocalMongo(data_dir=tmp_path, port=free_port())
    server.start()
    server.kill()  # like a crash: the pid file stays behind
    assert server.pid_file.exists()
    with server:
        assert ping(server.uri())


@pytest.mark.slow
def test_pid_file_naming_another_live_process_does_not_block_start(tmp_path):
    """After a crash the recorded pid may belong to an unrelated process by now."""
    other = subprocess.Popen(["sleep", "3600"])
    try:
        tmp_path.mkdir(exist_ok=True)
        (tmp_path / "nx-27017.pid").write_text(f"{other.pid}\n")
        with LocalMongo(data_dir=tmp_path, port=free_port()) as server:
            assert ping(server.uri())
            assert server.pid_file.read_text().strip() == str(server.process.pid)
        assert other.poll() is None, "the unrelated process must be left alone"
    finally:
        other.kill()
        other.wait()


@pytest.mark.slow
def test_running_instance_refuses_a_second_one_on_its_data(tmp_path):
    with LocalMongo(data_dir=tmp_path, port=free_port()) as first:
        second = LocalMongo(data_dir=tmp_path, port=free_port())
        with pytest.raises(LocalMongoError, match=f"another nx-27017 \\(pid {first.process.pid}\\)"):
            second.start()
        assert second.process is None
        assert ping(first.uri())


def modes(folder):
    """{relative path: permission bits} of ``folder`` and everything in it."""
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode)
            for p in [folder, *folder.rglob("*")]}


@pytest.mark.slow
def test_database_files_are_private_to_the_service_user(tmp_path):
    data = tmp_path / "mongo"
    with LocalMongo(data_dir=data, port=free_port()) as server:
        client = pymongo.MongoClient(server.uri())
        client.get_default_database().patients.insert_one({"mrn": 7})
        client.close()
        found = modes(data)
    assert {"nx-27017.pid", "nx-27017.log", "db"} <= set(found)
    assert any(name.startswith("db/") for name in found), "the database wrote no files"
    loose = {name: oct(mode) for name, mode in found.items() if mode & 0o077}
    assert loose == {}, "readable or writable by other users"


def test_make_private_tightens_what_earlier_runs_left_open(tmp_path):
    (tmp_path / "db").mkdir(mode=0o755)
    (tmp_path / "db" / "audit.sqlite").write_text("x")
    (tmp_path / "db" / "audit.sqlite").chmod(0o666)
    (tmp_path / "tokens.json").write_text("{}")
    (tmp_path / "tokens.json").chmod(0o600)  # already private: left as it is
    tmp_path.chmod(0o755)
    assert make_private(tmp_path) == 3
    assert modes(tmp_path) == {".": 0o700, "db": 0o700, "db/audit.sqlite": 0o600,
                               "tokens.json": 0o600}
    assert make_private(tmp_path) == 0
