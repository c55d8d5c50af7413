"""Benchmark: full analysis vs. bare ``pandas.read_csv`` on 1-hour and 8-hour recordings.

Generates the recordings in a temporary directory, then in the same run times (median of
several runs) ``pandas.read_csv`` of the file alone and ``analyze()`` + ``flow_plot_png()``,
and measures the peak RSS of one full analysis in a fresh subprocess. Prints a markdown table.

    python benchmarks/bench_analysis.py [--hours 1 8] [--repeat 5]

Targets (issue 2): 8 h full analysis <= 2x bare read_csv; peak RSS < 1 GB at 8 h; 1 h < 0.5 s.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cpap_measurements import analyze, flow_plot_png  # noqa: E402
from cpap_synth import SynthConfig, write  # noqa: E402

RSS_CHILD = """
import sys
sys.path.insert(0, {root!r})
from cpap_measurements import analyze, flow_plot_png
flow_plot_png(analyze({path!r}))
# VmHWM is this process image's own peak; ru_maxrss would include the forking parent's
# pages, which Linux carries across exec.
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def median_times(fns: dict, repeat: int) -> dict:
    """Median wall and CPU time (s) of each function over ``repeat`` rounds.

    The functions take turns within each round, so load from other jobs on a shared
    machine hits all alike; CPU time (this process only) is reported too, because on a
    busy machine wall time mostly measures the other jobs."""
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in fns}


def peak_rss_mb(path: Path) -> float:
    """Peak resident memory of one analyze + plot in a fresh interpreter, MB."""
    out = subprocess.run([sys.executable, "-c", RSS_CHILD.format(root=str(ROOT), path=str(path))],
                         check=True, capture_output=True, text=True).stdout
    return int(out.split()[-1]) / 1024  # kB -> MB


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, nargs="*", default=[1, 8])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    rows = []
    cases = [(f"{h:g} h", h, {}) for h in args.hours]
    if args.hours:  # real night files have bad lines: the longest again with some
        cases.append((f"{max(args.hours):g} h, 40 bad + 5 blank lines", max(args.hours),
                      {"bad_lines": 40, "blank_lines": 5}))
    with tempfile.TemporaryDirectory() as tmp:
        clean = {}
        for label, hours, extra in cases:
            path = Path(tmp) / f"cpap_{hours:g}h{'_bad' if extra else ''}.txt"
            truth = write(path, SynthConfig(duration_s=hours * 3600, rate_bpm=15,
                                            apnea_gaps_s=(15.0, 25.0, 35.0), seed=1, **extra))
            clean.setdefault(hours, path)
            reference = clean[hours]  # bare read_csv stops at a bad line: time the clean twin
            size_mb = path.stat().st_size / 1e6
            result = analyze(path)
            flow_plot_png(result)  # warm-up: first matplotlib use loads fonts
            t = median_times({
                "read": lambda: pd.read_csv(reference),
                "full": lambda: flow_plot_png(analyze(path)),
                "plot": lambda: flow_plot_png(result),
            }, args.repeat)
            rss = peak_rss_mb(path)
            (read_s, read_cpu), (full_s, full_cpu), (plot_s, _) = t["read"], t["full"], t["plot"]
            rows.append((label, len(result.time), size_mb, read_s, full_s, full_s / read_s,
                         read_cpu, full_cpu, full_cpu / read_cpu, plot_s, rss,
                         f"{result.breaths}/{truth['breaths']}", f"{result.apnea_count}/{truth['apnea_count']}",
                         len(result.skipped_lines)))
            print(f"done {label}", file=sys.stderr)
    print("| recording | rows | size (MB) | bare read_csv wall (s) | analyze + plot wall (s) | ratio wall "
          "| bare read_csv CPU (s) | analyze + plot CPU (s) | ratio CPU | plot alone (s) | peak RSS (MB) "
          "| breaths found/true | apneas found/true | skipped lines |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:,} | {r[2]:.0f} | {r[3]:.2f} | {r[4]:.2f} | {r[5]:.2f} | {r[6]:.2f} "
              f"| {r[7]:.2f} | {r[8]:.2f} | {r[9]:.2f} | {r[10]:.0f} | {r[11]} | {r[12]} | {r[13]} |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
