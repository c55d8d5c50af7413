"""Shared pytest fixtures.

``local_mongo`` starts one real nx-27017 server (MongoDB wire protocol over TCP)
for the whole test session, on a free port with its own data dir and pid file.
"""
from __future__ import annotations

import mongomock.collection
import pytest

from tools.local_mongo import LocalMongo, free_port

_mongomock_add_update = mongomock.collection.BulkOperationBuilder.add_update


def _add_update(self, *args, sort=None, **kwargs):
    """mongomock 4.3 predates the ``sort`` that pymongo 4.20 hands a bulk update (the
    storage never sorts one: always None)."""
    assert sort is None
    return _mongomock_add_update(self, *args, **kwargs)


mongomock.collection.BulkOperationBuilder.add_update = _add_update


#: Access-control settings a developer may have exported; tests set their own.
AUTH_ENV = ("API_TOKEN", "API_TOKENS_FILE", "API_PROTECT_READS", "API_TRUST_PROXY",
            "API_REQUIRE_AUTH", "API_SESSION_HOURS", "SLEEPLAB_API_TOKEN", "SLEEPLAB_AUTH",
            "SLEEPLAB_SIGN_IN", "SLEEPLAB_STATION_TOKEN", "SLEEPLAB_MONITOR_TOKEN")


def pytest_collection_modifyitems(items):
    """A test on the real database server (``local_mongo``, directly or through another
    fixture) is slow: it starts nx-27017 once and talks to it over TCP."""
    for item in items:
        if "local_mongo" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _no_auth_from_the_shell(monkeypatch):
    """Tests start from open mode (no tokens) whatever the shell exports."""
    for name in AUTH_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def local_mongo(tmp_path_factory):
    """A running nx-27017 server for integration tests (stopped at the end)."""
    server = LocalMongo(data_dir=tmp_path_factory.mktemp("nx27017"), port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def make_app():
    """``make_app(**config)``: a new API app on a new in-memory mongomock database (the
    same storage module), with ``config`` added to (or replacing) the test defaults."""
    import mongomock

    from server import create_app

    def make(**config):
        return create_app({"TESTING": True,
                           "MONGO_CLIENT": mongomock.MongoClient(tz_aware=True), **config})

    return make


@pytest.fixture
def app(make_app):
    """The API on a fresh in-memory mongomock database."""
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()
