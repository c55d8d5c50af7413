"""gunicorn settings of the API: the one configuration of every deployment.

    gunicorn -c gunicorn.conf.py        # serves server:create_app() on API_HOST:API_PORT

``./run.sh`` (tools/launcher.py), the tests and benchmarks (tools/api_process.py) and the
container (Dockerfile) all start gunicorn with this file (``gunicorn_command``); the
launcher adds a pid file, two tests a log option. Each worker reads every request
completely on an event loop before a thread runs the Flask app, so slow clients cannot
hold the threads (sleeplab/api/serving.py says how and why; docs/README-hardening.md has
the measurements).
"""
import os

from sleeplab.api import serving

wsgi_app = "server:create_app()"
bind = [f"{os.environ.get('API_HOST') or '127.0.0.1'}:{os.environ.get('API_PORT') or '5000'}"]
worker_class = "sleeplab.api.serving.Worker"
#: Worker processes; each runs the app in API_THREADS threads (serving.create_asgi_app).
workers = int(os.environ.get("API_WORKERS") or 2)
#: Open connections per worker, slow ones included; more wait in the listen backlog.
worker_connections = 1000
# The time a request head may take (first and kept-alive requests alike): serving.py.
keepalive = serving.HEAD_TIMEOUT_S
# A worker whose event loop has not run for this long is killed and replaced. The loop
# only reads and writes; requests run in threads.
timeout = 30
# Ctrl-C / SIGTERM: requests in flight get this long; then the workers are killed (the
# launcher kills what is left of the process group a little later).
graceful_timeout = 10
# Several instances on one machine (quick start, tests) must not share one control
# socket: by default they all use ~/.gunicorn/gunicorn.ctl and the first to stop deletes
# it. Nothing here uses gunicornc, so there is none.
control_socket_disable = True
accesslog = os.environ.get("API_ACCESS_LOG", "-") or None
loglevel = os.environ.get("API_LOG_LEVEL") or "info"
# Tokens sent in a URL (refused by the API) must not reach the access log either.
logger_class = "sleeplab.api.logconfig.RedactingLogger"
