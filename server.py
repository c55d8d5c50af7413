"""Sleep Lab Monitor REST API (Flask).

Run with ``python server.py`` (Flask debug server on API_HOST:API_PORT) or under
gunicorn: ``gunicorn 'server:create_app()'``. All state lives in MongoDB, so any
number of workers or hosts can serve at once.
"""
from __future__ import annotations

import os

from flask import Flask, jsonify

import storage


def create_app(test_config: dict | None = None) -> Flask:
    """Application factory (flaskr style).

    ``test_config`` may set ``MONGO_CLIENT`` (e.g. a mongomock client) to bypass
    ``MONGODB_URI``.
    """
    app = Flask(__name__)
    app.config.from_mapping(
        MONGODB_URI=os.environ.get("MONGODB_URI", storage.DEFAULT_URI),
    )
    if test_config:
        app.config.update(test_config)
    storage.init_app(app)

    @app.get("/health")
    def health():
        ok = storage.get_storage().ping()
        return jsonify(status="ok" if ok else "unavailable",
                       database="ok" if ok else "unreachable"), (200 if ok else 503)

    return app


if __name__ == "__main__":
    create_app().run(host=os.environ.get("API_HOST", "127.0.0.1"),
                     port=int(os.environ.get("API_PORT", "5000")), debug=True)
