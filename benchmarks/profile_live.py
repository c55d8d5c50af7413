"""Where one live chunk's time goes: each step and each database round trip, timed.

    python -m benchmarks.profile_live [--chunks 200] [--warm-up 60] [--cprofile 25]

Starts its own nx-27017 (temporary data directory) and runs the app in this process
(Flask's test client: no HTTP, no gunicorn, one thread), as benchmarks/profile_upload.py
does for uploads: ``POST /api/v1/rooms/{room}/stream`` with a virtual patient's 10 s
chunks (~36 KB of JSON each), after ``--warm-up`` chunks (the analysis' state at its
steady size, the first results out). Prints the table of steps and round trips (mean ms
per chunk) and, with ``--cprofile N``, cProfile's N costliest functions (cumulative).
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

import server
from benchmarks.profile_upload import Timers, instrument, table, uninstrument
from sleeplab import live
from sleeplab.analysis import incremental
from sleeplab.virtual_patient import VirtualPatient
from tools.local_mongo import LocalMongo, free_port

ROOM, MRN, SESSION = 3, 3003, "profile-night-0001"
CHUNK_S = 10.0

#: The live path's own steps (besides profile_upload's database round trips).
STEPS = ((incremental, "feed", "analyse the chunk (incremental.feed)"),
         (live, "chunk_changes", "the night's new fields (live.chunk_changes)"),
         (live, "summary", "the summary (live.summary)"))


def chunks(n: int, pressure_cmh2o: int = 8):
    patient = VirtualPatient(seed=3, optimal_pressure_cmh2o=10.0)
    return [patient.next_chunk(CHUNK_S, pressure_cmh2o, header=k == 0) for k in range(n)]


def post(client, sequence: int, samples: str) -> None:
    answer = client.post(f"/api/v1/rooms/{ROOM}/stream", json={
        "mrn": MRN, "session_id": SESSION, "sequence": sequence, "pressure_cmh2o": 8,
        "samples": samples})
    assert answer.status_code == 201, answer.get_data(as_text=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--warm-up", type=int, default=60)
    parser.add_argument("--cprofile", type=int, default=0, metavar="N")
    args = parser.parse_args(argv)
    texts = chunks(args.warm_up + args.chunks)
    with tempfile.TemporaryDirectory(prefix="profile-live-") as tmp, \
            LocalMongo(data_dir=Path(tmp), port=free_port()) as db:
        app = server.create_app({"MONGODB_URI": db.uri("profile_live")})
        client = app.test_client()
        for sequence in range(args.warm_up):
            post(client, sequence, texts[sequence])
        timers = Timers()
        instrument(timers)
        originals = [(owner, name, getattr(owner, name)) for owner, name, _ in STEPS]
        for owner, name, label in STEPS:
            timers.wrap(owner, name, label)
        profiler = cProfile.Profile() if args.cprofile else None
        total_s = 0.0
        try:
            for sequence in range(args.warm_up, args.warm_up + args.chunks):
                start = time.perf_counter()
                if profiler:
                    profiler.enable()
                post(client, sequence, texts[sequence])
                if profiler:
                    profiler.disable()
                total_s += time.perf_counter() - start
        finally:
            uninstrument()
            for owner, name, original in originals:
                setattr(owner, name, original)
        app.config["MONGO_CLIENT"].close()
    result = {"uploads": args.chunks, "total_ms": 1000 * total_s / args.chunks,
              "steps": {k: v / args.chunks for k, v in timers.total_ms.items()},
              "calls": {k: v / args.chunks for k, v in timers.calls.items()}}
    print(table("POST /api/v1/rooms/{room}/stream (10 s chunk, ~36 KB JSON)", result)
          .replace("per upload", "per chunk").replace("uploads, mean", "chunks, mean"))
    if profiler:
        print(f"\ncProfile (with its own overhead), {args.chunks} chunks, cumulative:")
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative").print_stats(
            args.cprofile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
