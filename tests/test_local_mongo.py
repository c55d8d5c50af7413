"""The local database helper: real nx-27017 over TCP, data kept across restarts."""
import os

import pymongo
import pytest

from local_mongo import LocalMongo, LocalMongoError, free_port, ping


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


def test_stale_pid_file_does_not_block_start(tmp_path):
    server = LocalMongo(data_dir=tmp_path, port=free_port())
    server.start()
    server.kill()  # like a crash: the pid file stays behind
    assert server.pid_file.exists()
    with server:
        assert ping(server.uri())


def test_live_pid_file_refuses_second_instance(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "nx-27017.pid").write_text(str(os.getpid()))
    with pytest.raises(LocalMongoError, match="another nx-27017"):
        LocalMongo(data_dir=tmp_path, port=free_port()).start()
