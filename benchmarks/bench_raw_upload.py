"""8-hour raw upload end to end through gunicorn vs. ``analyze(path)`` alone (issue #12).

    python benchmarks/bench_raw_upload.py [--rounds 3] [--hours 8]

Generates one synthetic recording (cpap_synth, 8 h ~ 114 MB) in a temporary directory,
starts its own nx-27017 and the API as every deployment runs it (``gunicorn -c
gunicorn.conf.py`` via api_process.ApiServer, open mode: no tokens), all on loopback ports.
Then, interleaved for ``--rounds`` rounds:

(a) ``cpap_measurements.analyze(path)`` + ``flow_plot_png(result)`` in a child interpreter
    (its memory apart from ours and the server's), timed inside the child after its imports;
(b) one ``POST /api/v1/rooms/{room}/recordings`` multipart upload of the same file, timed
    end to end by the client, while a thread samples the VmRSS of every gunicorn worker
    (children of the master, from /proc) every 0.05 s.

Prints a markdown table per round and the median, and whether the targets hold:
upload / analyze <= 1.5 and worker peak RSS < 1024 MB. Exits 1 only if an upload fails.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests

from tools import cpap_synth
from tools.api_process import ApiServer
from tools.local_mongo import LocalMongo, free_port

ROOT = Path(__file__).resolve().parents[1]

RSS_SAMPLE_INTERVAL_S = 0.05
UPLOAD_TIMEOUT_S = 300
TARGET_RATIO = 1.5
TARGET_RSS_MB = 1024
ROOM = 7
MRN = 7
PRESSURE_CMH2O = 10
WARMUP_REQUESTS = 4  # at least one per worker, so no round pays the analysis-stack import

# Timed after the imports: the server's workers have the stack loaded after the warm-up.
ANALYZE_CHILD = """
import time
from cpap_measurements import analyze, flow_plot_png
started = time.perf_counter()
flow_plot_png(analyze({path!r}))
print(time.perf_counter() - started)
"""


def analyze_alone_s(path: Path) -> float:
    """Wall time (s) of analyze(path) + flow_plot_png in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", ANALYZE_CHILD.format(path=str(path))], cwd=ROOT,
                         check=True, capture_output=True, text=True, timeout=UPLOAD_TIMEOUT_S)
    return float(out.stdout.split()[-1])


def worker_pids(master_pid: int) -> list[int]:
    """PIDs of the gunicorn master's children (its workers), from /proc."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children")
    try:
        return [int(pid) for pid in children.read_text().split()]
    except OSError:
        return []


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` (MB); 0 when it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class PeakRss:
    """Samples the RSS of every worker of a gunicorn master until stopped; keeps the peak."""

    def __init__(self, master_pid: int):
        self.master_pid, self.peak_mb = master_pid, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in worker_pids(self.master_pid):
                self.peak_mb = max(self.peak_mb, rss_mb(pid))
            self._stop.wait(RSS_SAMPLE_INTERVAL_S)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def post_recording(url: str, path: Path, upload_id: str | None) -> requests.Response:
    with path.open("rb") as data:
        return requests.post(url, files={"file": (path.name, data, "text/plain")},
                             data={"mrn": MRN, "cpap_pressure_cmh2o": PRESSURE_CMH2O,
                                   "upload_id": upload_id or ""},
                             timeout=UPLOAD_TIMEOUT_S)


def warm_up(url: str, tiny: Path) -> None:
    """Concurrent tiny uploads (refused by the analysis, 422) so each worker imports the
    analysis stack before the timed rounds."""
    threads = [threading.Thread(target=post_recording, args=(url, tiny, None))
               for _ in range(WARMUP_REQUESTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def run(rounds: int, hours: float) -> tuple[list[dict], bool]:
    rows, ok = [], True
    with tempfile.TemporaryDirectory() as tmp:
        recording, tiny = Path(tmp) / "recording.txt", Path(tmp) / "tiny.txt"
        cpap_synth.write(recording, duration_s=hours * 3600, apnea_gaps_s=(15.0,))
        tiny.write_text("time\n")
        size_mb = recording.stat().st_size / 2**20
        print(f"recording: {hours:g} h, {size_mb:.0f} MB", file=sys.stderr)
        with LocalMongo(data_dir=Path(tmp) / "db", port=free_port()) as database, \
                ApiServer(database.uri()) as server:
            url = f"{server.url}/api/v1/rooms/{ROOM}/recordings"
            warm_up(url, tiny)
            for number in range(1, rounds + 1):
                analyze_s = analyze_alone_s(recording)
                with PeakRss(server.process.pid) as sampler:
                    started = time.perf_counter()
                    answer = post_recording(url, recording, uuid.uuid4().hex)
                    upload_s = time.perf_counter() - started
                if answer.status_code not in (200, 201):
                    print(f"round {number}: upload failed: {answer.status_code} "
                          f"{answer.text[:300]}", file=sys.stderr)
                    ok = False
                rows.append({"round": str(number), "analyze_s": analyze_s,
                             "upload_s": upload_s, "ratio": upload_s / analyze_s,
                             "rss_mb": sampler.peak_mb})
    return rows, ok


def table(rows: list[dict]) -> str:
    median = {key: statistics.median(row[key] for row in rows)
              for key in ("analyze_s", "upload_s", "ratio", "rss_mb")}
    lines = ["| round | analyze + plot (s) | upload end to end (s) | upload / analyze "
             "| worker peak RSS (MB) |", "|---|---|---|---|---|"]
    for row in [*rows, {"round": "**median**", **median}]:
        lines.append(f"| {row['round']} | {row['analyze_s']:.2f} | {row['upload_s']:.2f} "
                     f"| {row['ratio']:.2f} | {row['rss_mb']:.0f} |")
    ratio_ok = median["ratio"] <= TARGET_RATIO
    rss_ok = max(row["rss_mb"] for row in rows) < TARGET_RSS_MB
    lines.append("")
    lines.append(f"Target ratio <= {TARGET_RATIO} (median): {'met' if ratio_ok else 'NOT met'}; "
                 f"target worker peak RSS < {TARGET_RSS_MB} MB (every round): "
                 f"{'met' if rss_ok else 'NOT met'}.")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hours", type=float, default=8.0)
    args = parser.parse_args()
    rows, ok = run(args.rounds, args.hours)
    print(table(rows))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
