"""Uploads and the all-rooms read: this API beside the origin project, in one run.

    python benchmarks/bench_origin.py --origin-git GIT_DIR_OR_URL --origin-pythonpath DIR
    python benchmarks/bench_origin.py --origin-dir CHECKOUT --origin-pythonpath DIR

The origin is the project this one was rewritten from: Flask + SQLAlchemy on SQLite, one
row per room whose JSON lists are rewritten on every upload
(https://github.com/jason-n-tran/cpap_patient_monitor). Its code is never part of this
repository: ``--origin-git`` (default: that GitHub address) is cloned into a temporary
folder for the run, or ``--origin-dir`` names a checkout you made. It needs SQLAlchemy,
which this project does not use: install it apart and name the folder, e.g.
``pip install --target /tmp/origin-deps SQLAlchemy`` then ``--origin-pythonpath
/tmp/origin-deps`` (Flask, requests and gunicorn come from this interpreter).

Every server runs under ``gunicorn -w 2`` on a free loopback port, each with a fresh
database; all are started first, then they take turns (one at a time, the order rotating
each round), so a change in the shared machine's load falls on all of them alike:

- origin: ``gunicorn -w 2 server:app`` (sync workers) in its checkout (its SQLite file
  ``patients.db`` is created there);
- ours, sync: ``gunicorn --config gunicorn.conf.py`` with ``GUNICORN_CMD_ARGS=
  "--worker-class sync"`` (gunicorn's own override of the config file), i.e. the same
  worker model as the origin: the row the targets are read from;
- ours, as deployed: ``gunicorn --config gunicorn.conf.py`` unchanged (serving.Worker, a
  thread pool of API_THREADS per worker).

Ours runs against nx-27017 (local_mongo.py) in a temporary folder, as the quick start.
The workload (issue #15), each a closed loop of ``--clients`` threads, ``--rounds`` times:

1. 200 uploads through ``POST /add_patient`` (both servers have this route, same JSON
   body), 20 rooms x 10 records of patients new in each round, each upload with a 23 KB
   base64 JPEG flow image;
2. the monitor's all-rooms read, 200 times: ``GET /get_all_patients`` (origin; its whole
   rows, images included) and ``GET /api/v1/rooms`` (ours);

then 3. history growth: 2 x 1,000 uploads to one new patient, 100 at a time per server in
turn; req/s of the last 1,000 over the first 1,000 (1.0 = flat). Ours go through ``POST
/api/v1/patients``, whose answer counts the patient's records (the part that grows), and
each step is repeated for a patient new in that step: the flatness is also given over this
control's own last/first ratio, which takes out the drift of the shared machine's load.
The origin rewrites its growing row each time: it stops after ``--origin-history-s``
seconds and says how far it got. Rounds are pooled: req/s over their summed time (each
round's in brackets), percentiles over all latencies.

Two more things are measured during the uploads: each server's CPU time per upload by
process (this script, the load generator; the server's gunicorn processes; its database
process), from /proc; and ``storage_only``: our storage layer alone on its own fresh
nx-27017, ``Storage.upload`` called from the client threads in this process with the same
bodies (validated before the clock starts) -- the database's part of an upload, with no
HTTP, gunicorn or Flask: a ceiling for what any API in front of that database can reach.

Prints a markdown table with every server and the ratios ours/origin, then the CPU table.
Nothing leaves the machine; every server and database started here is stopped at the end.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from tools.local_mongo import LocalMongo, free_port
from tools.processes import process_group_cpu_s, stop_process, wait_http

ROOT = Path(__file__).resolve().parents[1]

ORIGIN_REPOSITORY = "https://github.com/jason-n-tran/cpap_patient_monitor"
ROOMS, RECORDS_PER_ROOM = 20, 10
#: The flow image of every upload: a JPEG whose base64 text is about 23 KB.
IMAGE_BASE64_CHARS = 23 * 1024
READS = 200
HISTORY_BATCH = 1000
#: History uploads a server takes in one turn.
HISTORY_STEP = 100
HISTORY_ROOM, HISTORY_MRN = 99, 99_999
#: The control of the history run: a new patient each step, in a room of its own.
CONTROL_ROOM, CONTROL_MRN = 98, 200_000
GUNICORN_WORKERS = 2
#: What gunicorn reads after its config file (and before its command line).
SYNC_WORKERS_ENV = {"GUNICORN_CMD_ARGS": "--worker-class sync"}


def flow_jpeg(target_b64_chars: int = IMAGE_BASE64_CHARS) -> bytes:
    """A flow-plot-like JPEG (a noisy trace on white) whose base64 is ~``target`` chars."""
    rng = np.random.default_rng(15)
    width, height = 640, 240
    best = b""
    for quality in range(95, 10, -5):
        pixels = np.full((height, width), 255, np.uint8)
        t = np.arange(width)
        trace = (height / 2 + 70 * np.sin(t / 18) + rng.normal(0, 6, width)).astype(int)
        for dy in range(-1, 2):
            pixels[np.clip(trace + dy, 0, height - 1), t] = 30
        pixels = (pixels.astype(np.int16) + rng.integers(-12, 12, pixels.shape)).clip(0, 255)
        buf = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).convert("RGB").save(buf, "JPEG",
                                                                     quality=quality)
        best = buf.getvalue()
        if len(base64.b64encode(best)) <= target_b64_chars:
            break
    return best


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


@dataclass
class Loop:
    """What a closed loop measured."""
    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    body_bytes: int = 0
    #: CPU seconds by process while it ran (:func:`cpu_by_process`).
    cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def per_s(self) -> float:
        return len(self.latencies_s) / self.wall_s if self.wall_s else float("nan")

    def ms(self, q: float) -> float:
        return percentile(self.latencies_s, q) * 1000

    def summary(self) -> dict:
        return {"requests": len(self.latencies_s) + len(self.errors),
                "errors": len(self.errors), "error_kinds": sorted(set(self.errors))[:5],
                "per_s": self.per_s, "p50_ms": self.ms(50), "p99_ms": self.ms(99),
                "wall_s": self.wall_s, "body_bytes": self.body_bytes}


@dataclass
class Server:
    """A server under test: its URL and the processes whose CPU time is its own.
    ``storage``: no server, :class:`sleeplab.storage.Storage` called from this process."""
    url: str | None
    api_group: int | None = None       # gunicorn's process group: master and workers
    database_group: int | None = None  # ours: its nx-27017's
    storage: object = None


def cpu_by_process(server: Server) -> dict[str, float]:
    """CPU seconds so far of: this process (the load generator; with ``storage``, the
    storage layer too), the server's gunicorn processes, its database."""
    cpu = {"load generator": time.process_time()}
    if server.api_group is not None:
        cpu["API"] = process_group_cpu_s(server.api_group)
    if server.database_group is not None:
        cpu["database"] = process_group_cpu_s(server.database_group)
    return cpu


def measured_cpu(server: Server, run) -> Loop:
    """``run()``'s Loop with the CPU time each process spent meanwhile."""
    before = cpu_by_process(server)
    loop = run()
    after = cpu_by_process(server)
    loop.cpu_s = {name: after[name] - before[name] for name in before}
    return loop


def closed_loop(calls: list, clients: int, deadline: float | None = None) -> Loop:
    """Run ``calls`` (each ``(method, url, kwargs)``) over ``clients`` threads, each
    with its own HTTP session, as fast as answers come; stop early at ``deadline``
    (a ``time.monotonic()`` value)."""
    loop, lock, local = Loop(), threading.Lock(), threading.local()

    def one(call):
        if deadline is not None and time.monotonic() > deadline:
            return
        method, url, kwargs = call
        if not hasattr(local, "http"):
            local.http = requests.Session()
        start = time.perf_counter()
        try:
            response = local.http.request(method, url, timeout=120, **kwargs)
            error = None if response.status_code in (200, 201) else f"HTTP {response.status_code}"
            size = len(response.content)
        except requests.RequestException as exc:
            error, size = type(exc).__name__, 0
        elapsed = time.perf_counter() - start
        with lock:
            (loop.errors.append(error) if error else loop.latencies_s.append(elapsed))
            loop.body_bytes = max(loop.body_bytes, size)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, calls))
    loop.wall_s = time.perf_counter() - start
    return loop


def upload_body(mrn: int, room: int, i: int, image_b64: str) -> dict:
    """One upload in the names of ``POST /add_patient`` (the origin's and ours)."""
    return {"patient_mrn": mrn, "room_number": room, "patient_name": f"Patient {room}",
            "CPAP_pressure": 4 + i % 20, "breath_rate": 12.0 + i % 7 / 2,
            "apnea_count": i % 4, "flow_image": image_b64}


def upload_bodies(round_no: int, image_b64: str) -> list[dict]:
    """A round's uploads: new patients in rooms 1-20 (the origin replaces a room's row
    when its MRN changes), 10 records each, interleaved over the rooms."""
    return [upload_body(10_000 + 100 * round_no + 1 + i % ROOMS, 1 + i % ROOMS, i, image_b64)
            for i in range(ROOMS * RECORDS_PER_ROOM)]


def upload_calls(url: str, round_no: int, image_b64: str) -> list:
    return [("POST", f"{url}/add_patient", {"json": body})
            for body in upload_bodies(round_no, image_b64)]


def storage_uploads(storage, round_no: int, image_b64: str, clients: int) -> Loop:
    """The round's uploads as ``POST /add_patient`` stores them, validated first (not
    timed), then ``Storage.upload`` called from ``clients`` threads: the database's part
    of an upload with no HTTP, no gunicorn and no Flask."""
    from sleeplab.api import models
    uploads = [models.LegacyUpload.from_body(body) for body in upload_bodies(round_no, image_b64)]
    loop, lock = Loop(), threading.Lock()

    def one(upload):
        start = time.perf_counter()
        storage.upload(upload.mrn, upload.room, name=upload.name, metrics=upload.metrics(),
                       image=upload.flow_image, actor={"name": "bench", "role": "station"},
                       with_record_count=False)
        elapsed = time.perf_counter() - start
        with lock:
            loop.latencies_s.append(elapsed)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, uploads))
    loop.wall_s = time.perf_counter() - start
    return loop


def history_calls(url: str, origin: bool, mrn: int, room: int, start: int, n: int,
                  image_b64: str) -> list:
    """Uploads ``start``.. ``start + n`` to one patient: the origin's route, or ours that
    answers the patient with its record count (counted on read: the one part of an upload
    that grows with the history)."""
    if origin:
        return [("POST", f"{url}/add_patient",
                 {"json": upload_body(mrn, room, start + i, image_b64)}) for i in range(n)]
    return [("POST", f"{url}/api/v1/patients",
             {"json": {"mrn": mrn, "room": room, "name": f"Patient {room}",
                       "cpap_pressure_cmh2o": 4 + (start + i) % 20, "breath_rate_bpm": 12.5,
                       "apnea_count": (start + i) % 4, "flow_image": image_b64}})
            for i in range(n)]


@contextlib.contextmanager
def gunicorn(command: list[str], cwd: Path, env: dict, name: str, quiet: bool = False):
    """A gunicorn master (its own process group) until the block ends; yields its URL.
    ``quiet``: its error output is dropped too (the errors are counted)."""
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL if quiet else None,
                            start_new_session=True)
    try:
        wait_http(f"{env['BENCH_URL']}/health", proc, name, 60)
        yield Server(env["BENCH_URL"], api_group=proc.pid)
    finally:
        stop_process(proc)


def origin_checkout(args, tmp: Path) -> Path:
    if args.origin_dir:
        return args.origin_dir.resolve()
    target = tmp / "origin"
    source = args.origin_git
    if Path(source).exists():  # a local git directory (e.g. a fetched snapshot)
        source = Path(source).resolve().as_uri()
    subprocess.run(["git", "clone", "--quiet", "--depth", "1", source, str(target)], check=True)
    return target


def start_origin(stack: contextlib.ExitStack, checkout: Path, args) -> Server:
    """The origin under ``gunicorn -w 2 server:app`` (sync), a fresh SQLite file."""
    (checkout / "patients.db").unlink(missing_ok=True)
    stack.callback(lambda: (checkout / "patients.db").unlink(missing_ok=True))
    env = dict(os.environ, BENCH_URL=f"http://127.0.0.1:{free_port()}",
               PYTHONPATH=os.pathsep.join(
                   p for p in (str(args.origin_pythonpath or ""), str(checkout)) if p))
    env.pop("GUNICORN_CMD_ARGS", None)
    command = [str(Path(sys.executable).with_name("gunicorn")), "-w", str(GUNICORN_WORKERS),
               "-b", env["BENCH_URL"].removeprefix("http://"), "--log-level", "warning",
               "server:app"]
    # Its own races (two first uploads to a new room: a UNIQUE constraint, a 500 with a
    # traceback) are counted as errors in the table, not printed.
    return stack.enter_context(gunicorn(command, checkout, env, "the origin's gunicorn",
                                        quiet=True))


def start_ours(stack: contextlib.ExitStack, tmp: Path, name: str, extra_env: dict,
               checkout: Path = ROOT) -> Server:
    """Ours (from ``checkout``) under ``gunicorn --config gunicorn.conf.py``, started as
    api_process.ApiServer starts it, on its own fresh nx-27017."""
    db = stack.enter_context(LocalMongo(data_dir=tmp / f"db-{name}", port=free_port()))
    port = free_port()
    env = dict(os.environ, MONGODB_URI=db.uri("benchorigin"), API_HOST="127.0.0.1",
               API_PORT=str(port), API_WORKERS=str(GUNICORN_WORKERS), API_ACCESS_LOG="",
               API_LOG_LEVEL="warning", BENCH_URL=f"http://127.0.0.1:{port}", **extra_env)
    command = [str(Path(sys.executable).with_name("gunicorn")), "--config",
               str(checkout / "gunicorn.conf.py")]
    server = stack.enter_context(gunicorn(command, checkout, env, f"gunicorn ({name})"))
    server.database_group = db.process.pid  # started in its own session
    return server


def start_storage_only(stack: contextlib.ExitStack, tmp: Path) -> Server:
    """Our storage layer on its own fresh nx-27017, called from this process."""
    import pymongo
    from sleeplab.storage import Storage
    db = stack.enter_context(LocalMongo(data_dir=tmp / "db-storage", port=free_port()))
    client = stack.enter_context(pymongo.MongoClient(db.uri("benchorigin"), tz_aware=True))
    storage = Storage(client.get_default_database())
    storage.ensure_indexes()
    return Server(None, database_group=db.process.pid, storage=storage)


def round_of_uploads(server: Server, round_no: int, image_b64: str, clients: int) -> Loop:
    if server.url is None:
        return storage_uploads(server.storage, round_no, image_b64, clients)
    return closed_loop(upload_calls(server.url, round_no, image_b64), clients)


def pooled(loops: list[Loop]) -> dict:
    """Rounds of one measurement as one: req/s over their summed wall time, percentiles
    over every latency, and the range of the rounds' req/s."""
    whole = Loop([t for lp in loops for t in lp.latencies_s],
                 [e for lp in loops for e in lp.errors],
                 sum(lp.wall_s for lp in loops), max(lp.body_bytes for lp in loops))
    done = len(whole.latencies_s) or 1
    cpu_ms = {name: 1000 * sum(lp.cpu_s.get(name, 0.0) for lp in loops) / done
              for name in loops[0].cpu_s}
    return {**whole.summary(), "per_s_rounds": [lp.per_s for lp in loops],
            "cpu_ms_per_request": cpu_ms}


def measure(servers: dict[str, Server], args, image_b64: str) -> dict:
    """Every measurement, interleaved: each round runs one phase on every server in turn
    (the order rotating), so a change of the shared machine's load falls on all of them.
    The storage layer alone (no URL) takes part in the uploads only."""
    everyone = list(servers)
    names = [name for name in everyone if servers[name].url]
    uploads: dict[str, list[Loop]] = {n: [] for n in everyone}
    reads: dict[str, list[Loop]] = {n: [] for n in names}
    for round_no in range(args.rounds):
        order = everyone[round_no % len(everyone):] + everyone[:round_no % len(everyone)]
        for name in order:
            uploads[name].append(measured_cpu(servers[name], functools.partial(
                round_of_uploads, servers[name], round_no, image_b64, args.clients)))
        for name in [n for n in order if n in names]:
            path = "/get_all_patients" if name == "origin" else "/api/v1/rooms"
            reads[name].append(closed_loop([("GET", f"{servers[name].url}{path}", {})] * READS,
                                           args.clients))
    # History: 2 x history_batch uploads to one patient, in steps taken in turn. Ours
    # also upload each step to a patient new in that step (the control): the machine's
    # load drifts over minutes, and it moves both alike.
    history = {n: {"first": [], "last": [], "control_first": [], "control_last": []}
               for n in names}
    spent_s = dict.fromkeys(names, 0.0)
    total = 2 * args.history_batch
    for step, start in enumerate(range(0, total, HISTORY_STEP)):
        half = "first" if start < args.history_batch else "last"
        n = min(HISTORY_STEP, total - start)
        for name in names:
            origin = name == "origin"
            if origin and spent_s[name] > args.origin_history_s:
                continue  # the origin's growing row: stopped, reported as far as it got
            loop = closed_loop(history_calls(servers[name].url, origin, HISTORY_MRN, HISTORY_ROOM,
                                             start, n, image_b64), args.clients)
            history[name][half].append(loop)
            spent_s[name] += loop.wall_s
            if not origin:
                history[name][f"control_{half}"].append(closed_loop(history_calls(
                    servers[name].url, False, CONTROL_MRN + step, CONTROL_ROOM, 0, n, image_b64),
                    args.clients))
    results = {name: {"uploads": pooled(uploads[name]), "reads": pooled(reads[name]),
                      "history": {k: pooled(loops or [Loop()])
                                  for k, loops in history[name].items()}}
               for name in names}
    results.update({name: {"uploads": pooled(uploads[name])}
                    for name in everyone if name not in names})
    return results


SERVERS = {"origin": "origin: Flask + SQLite, `gunicorn -w 2 server:app` (sync)",
           "before_sync": "ours before (--before checkout), as ours, sync",
           "ours_sync": "ours: nx-27017, `gunicorn -c gunicorn.conf.py`, "
                        "GUNICORN_CMD_ARGS='--worker-class sync' (2 sync workers)",
           "ours_deployed": "ours as deployed: `gunicorn -c gunicorn.conf.py` "
                            "(2 serving.Worker x API_THREADS)",
           "storage_only": "ours, the database's part alone: Storage.upload from the client "
                           "threads, no HTTP, gunicorn or Flask (bodies validated untimed)"}


def history_cell(h: dict, batch: int, budget_s: float) -> str:
    """first → last req/s = ratio; for ours also the ratio over the control's (the same
    step's uploads to a new patient), which takes the machine's drift out."""
    first, last = h["first"], h["last"]
    if last["requests"] < batch:  # the origin, stopped after its time budget
        done = first["requests"] + last["requests"] - first["errors"] - last["errors"]
        return (f"{first['per_s']:.1f} over its first {min(first['requests'], batch)}; "
                f"stopped at {done} records ({budget_s:.0f} s budget)")
    ratio = last["per_s"] / first["per_s"]
    cell = f"{first['per_s']:.0f} → {last['per_s']:.0f} = {ratio:.2f}"
    if h["control_first"]["requests"]:
        control = h["control_last"]["per_s"] / h["control_first"]["per_s"]
        cell += f"; control {control:.2f}; **{ratio / control:.2f}** over the control"
    return cell


def table(results: dict, args) -> str:
    lines = [f"{args.rounds} rounds of {ROOMS * RECORDS_PER_ROOM} uploads (POST /add_patient, "
             f"{ROOMS} rooms x {RECORDS_PER_ROOM} records of new patients, "
             f"{args.image_b64_chars / 1024:.1f} KB base64 JPEG) and {READS} all-rooms reads, "
             f"{args.clients} client threads, the servers taking turns; history: "
             f"2 x {args.history_batch} uploads to one patient in steps of {HISTORY_STEP} "
             f"(ours: POST /api/v1/patients, answering the record count; each step also "
             f"uploaded to a new patient, the control)",
             "",
             "| server | uploads req/s (rounds) | upload p50 / p99 ms | all-rooms read req/s | "
             "read p50 / p99 ms | read body | history req/s: first → last batch = ratio "
             "| errors |",
             "|---|---:|---:|---:|---:|---:|---|---:|"]
    for key, r in results.items():
        if key.startswith("_") or "reads" not in r:
            continue
        u, rd = r["uploads"], r["reads"]
        errors = u["errors"] + rd["errors"] + sum(b["errors"] for b in r["history"].values())
        rounds = ", ".join(f"{x:.0f}" for x in u["per_s_rounds"])
        lines.append(f"| {SERVERS[key]} | {u['per_s']:.1f} ({rounds}) | {u['p50_ms']:.1f} / "
                     f"{u['p99_ms']:.1f} | {rd['per_s']:.1f} | {rd['p50_ms']:.1f} / "
                     f"{rd['p99_ms']:.1f} | {rd['body_bytes'] / 1024:,.1f} KB | "
                     f"{history_cell(r['history'], args.history_batch, args.origin_history_s)} "
                     f"| {errors} |")
    origin = results.get("origin")
    if origin:
        lines += ["", "| ours / origin | uploads req/s | all-rooms read req/s |",
                  "|---|---:|---:|"]
        for key, name in (("before_sync", "ours before, sync"), ("ours_sync", "ours, sync"),
                          ("ours_deployed", "ours as deployed")):
            if key in results:
                ratios = [results[key][kind]["per_s"] / origin[kind]["per_s"]
                          for kind in ("uploads", "reads")]
                lines.append(f"| {name} | **{ratios[0]:.2f}x** | **{ratios[1]:.2f}x** |")
    lines += ["", "CPU per upload by process (ms; the load generator is this script, "
                  "requests' HTTP client; the storage row's includes the storage layer):", "",
              "| server | uploads req/s | load generator | API (gunicorn) | database | total |",
              "|---|---:|---:|---:|---:|---:|"]
    for key, r in results.items():
        if key.startswith("_"):
            continue
        u, cpu = r["uploads"], r["uploads"]["cpu_ms_per_request"]
        cells = " | ".join(f"{cpu[n]:.2f}" if n in cpu else "—"
                           for n in ("load generator", "API", "database"))
        lines.append(f"| {SERVERS[key]} | {u['per_s']:.1f} | {cells} | "
                     f"{sum(cpu.values()):.2f} |")
    lines += ["", f"1-min load average at start / end: {results['_load'][0]:.1f} / "
                  f"{results['_load'][1]:.1f} (2 CPUs, shared)"]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--origin-git", default=ORIGIN_REPOSITORY,
                       help="git URL or git directory of the origin, cloned into a "
                            "temporary folder (default: %(default)s)")
    where.add_argument("--origin-dir", type=Path, help="a checkout of the origin to run")
    parser.add_argument("--origin-pythonpath", type=Path,
                        help="a folder holding SQLAlchemy (pip install --target DIR "
                             "SQLAlchemy), added to the origin's PYTHONPATH")
    parser.add_argument("--origin-history-s", type=float, default=180.0,
                        help="stop the origin's history run after this long")
    parser.add_argument("--before", type=Path,
                        help="a checkout of an earlier version of ours, run as 'ours, sync' "
                             "too (e.g. git worktree add /tmp/before main)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of uploads and reads")
    parser.add_argument("--clients", type=int, default=4, help="client threads")
    parser.add_argument("--history-batch", type=int, default=HISTORY_BATCH,
                        help="uploads per history batch (2 batches)")
    parser.add_argument("--only", choices=sorted(SERVERS), action="append",
                        help="run only these servers (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    image_b64 = base64.b64encode(flow_jpeg()).decode("ascii")
    args.image_b64_chars = len(image_b64)
    chosen = [name for name in (args.only or SERVERS)
              if name != "before_sync" or args.before]
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-origin-") as tmp_name, \
            contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        servers = {}
        if "origin" in chosen:
            servers["origin"] = start_origin(stack, origin_checkout(args, tmp), args)
        if "before_sync" in chosen:
            servers["before_sync"] = start_ours(stack, tmp, "before", SYNC_WORKERS_ENV,
                                                args.before.resolve())
        if "ours_sync" in chosen:
            servers["ours_sync"] = start_ours(stack, tmp, "sync", SYNC_WORKERS_ENV)
        if "ours_deployed" in chosen:
            servers["ours_deployed"] = start_ours(stack, tmp, "deployed", {})
        if "storage_only" in chosen:
            servers["storage_only"] = start_storage_only(stack, tmp)
        results: dict = measure(servers, args, image_b64)
    results["_load"] = [load_start, os.getloadavg()[0]]
    print(table(results, args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
