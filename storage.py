"""Storage: the only module that talks to MongoDB (pymongo).

``get_storage()`` caches one :class:`Storage` per app context on ``flask.g``;
the pymongo client itself is created once per process (it is thread-safe and
pools connections). Tests inject a mongomock client via ``MONGO_CLIENT``.
"""
from __future__ import annotations

import pymongo
from flask import current_app, g

DEFAULT_URI = "mongodb://127.0.0.1:27017/sleeplab"
DEFAULT_DATABASE = "sleeplab"


class Storage:
    def __init__(self, db):
        self.db = db

    def ping(self) -> bool:
        try:
            self.db.command("ping")
            return True
        except pymongo.errors.PyMongoError:
            return False


def _client(app):
    client = app.config.get("MONGO_CLIENT")
    if client is None:
        client = pymongo.MongoClient(app.config["MONGODB_URI"], tz_aware=True,
                                     serverSelectionTimeoutMS=3000)
        app.config["MONGO_CLIENT"] = client
    return client


def _database(app):
    client = _client(app)
    try:
        return client.get_default_database()
    except pymongo.errors.ConfigurationError:  # URI without a database name
        return client[DEFAULT_DATABASE]


def init_app(app) -> None:
    app.extensions["storage_db"] = _database(app)


def get_storage() -> Storage:
    if "storage" not in g:
        g.storage = Storage(current_app.extensions["storage_db"])
    return g.storage
