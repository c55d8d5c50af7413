"""Helpers for the UI tests: the real Flask API served over HTTP from a thread."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from unittest import mock

import requests
import streamlit as st
from werkzeug.serving import make_server

from tools.local_mongo import free_port


@contextmanager
def serve_api(app):
    """Serve ``app`` on a free 127.0.0.1 port in a daemon thread; yields the base URL."""
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="api", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)
        server.server_close()


def run(at):
    """Run an AppTest script; the run must not raise."""
    at.run()
    assert not at.exception, at.exception
    return at


def click(at, key):
    at.button(key=key).click()
    return run(at)


def closed_port_url() -> str:
    """A URL on which nothing listens (the port was free a moment ago)."""
    return f"http://127.0.0.1:{free_port()}"


def pressure_field(at):
    """The Patient Station's pressure field (one field: a commanded pressure arrives in it)."""
    return at.text_input(key="ps_pressure")


@contextmanager
def ui_sessions_from(session_class):
    """The UI keeps its pooled HTTP sessions for the whole process (st.cache_resource):
    drop them so the UI's next ones are built from ``session_class`` (a spy); dropped
    again afterwards so no later test talks through the spy."""
    st.cache_resource.clear()
    try:
        with mock.patch.object(requests, "Session", session_class):
            yield
    finally:
        st.cache_resource.clear()
