"""Benchmark: full analysis vs. bare ``pandas.read_csv`` on 1-hour and 8-hour recordings.

Generates the recordings in a temporary directory, then in the same run times ``pandas.read_csv``
of the file alone (A) and ``analyze()`` + ``flow_plot_png()`` (B), interleaved A B, B A, A B ...
so that both see the same load from other jobs, and measures the peak RSS of one full analysis
in a fresh subprocess. Prints a markdown table with median and minimum wall time, the median of
the per-round B/A wall ratios (each taken under the load of that moment) and CPU ratios.

    python benchmarks/bench_analysis.py [--hours 1 8] [--repeat 7] [--code DIR]

``--code DIR`` benchmarks the ``cpap_measurements.py`` in another checkout (e.g. the previous
commit, for a before/after table in one sitting); the synthetic files come from this one.

Targets (issue 2): 8 h full analysis <= 2x bare read_csv; peak RSS < 1 GB at 8 h; 1 h < 0.5 s.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from tools.cpap_synth import SynthConfig, write

ROOT = Path(__file__).resolve().parents[1]

# Run with the measured checkout as the working folder: ``python -c`` imports from there first.
RSS_CHILD = """
from cpap_measurements import analyze, flow_plot_png
flow_plot_png(analyze({path!r}))
# VmHWM is this process image's own peak; ru_maxrss would include the forking parent's
# pages, which Linux carries across exec.
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


class Timings:
    """Wall and CPU times (s) of each function, one entry per round."""

    def __init__(self, names):
        self.wall = {name: [] for name in names}
        self.cpu = {name: [] for name in names}

    def run(self, name, fn) -> None:
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        self.wall[name].append(time.perf_counter() - start)
        self.cpu[name].append(time.process_time() - start_cpu)

    def median(self, name, cpu=False) -> float:
        return statistics.median((self.cpu if cpu else self.wall)[name])

    def min(self, name) -> float:
        return min(self.wall[name])

    def paired_ratio(self, num, den, cpu=False) -> float:
        """Median over rounds of num/den measured in the same round (same load)."""
        times = self.cpu if cpu else self.wall
        return statistics.median(n / d for n, d in zip(times[num], times[den]))


def interleaved(fns: dict, repeat: int) -> Timings:
    """Run the functions ``repeat`` rounds, reversing their order every other round (A B, B A,
    ...) so neither always runs first after a pause or right after the other's garbage."""
    t = Timings(fns)
    order = list(fns)
    for i in range(repeat):
        for name in (order if i % 2 == 0 else order[::-1]):
            t.run(name, fns[name])
    return t


def peak_rss_mb(path: Path, code: Path) -> float:
    """Peak resident memory of one analyze + plot in a fresh interpreter, MB."""
    out = subprocess.run([sys.executable, "-c", RSS_CHILD.format(path=str(path))], cwd=code,
                         check=True, capture_output=True, text=True).stdout
    return int(out.split()[-1]) / 1024  # kB -> MB


def other_checkout(code: Path, argv: list[str]) -> int | None:
    """``--code DIR`` other than this checkout: run this benchmark again with ``DIR`` first
    on the import path (PYTHONPATH, so its ``cpap_measurements`` and ``sleeplab`` load,
    not this checkout's); None when ``DIR`` is this checkout."""
    if code == ROOT:
        return None
    rest = [a for i, a in enumerate(argv) if a != "--code" and (i == 0 or argv[i - 1] != "--code")
            and not a.startswith("--code=")]
    env = dict(os.environ, PYTHONPATH=str(code), BENCH_ANALYSIS_CODE=str(code))
    return subprocess.call([sys.executable, __file__, *rest], env=env)


COLUMNS = ("recording", "rows", "size (MB)", "read_csv wall median / min (s)",
           "analyze + plot wall median / min (s)", "ratio wall: paired median", "ratio wall: of medians",
           "ratio wall: of minima", "ratio CPU: paired median", "plot alone (s)", "peak RSS (MB)",
           "breaths found/true", "apneas found/true", "skipped lines")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, nargs="*", default=[1, 8])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose cpap_measurements.py to time")
    args = parser.parse_args(argv)
    code = args.code.resolve()
    again = other_checkout(code, sys.argv[1:] if argv is None else list(argv))
    if again is not None:
        return again
    import cpap_measurements as cm
    code = Path(os.environ.get("BENCH_ANALYSIS_CODE", ROOT))
    print(f"timing {cm.__file__}")
    logging.disable(logging.WARNING)  # the bad-lines case would log its skipped lines each round
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
            result = cm.analyze(path)
            cm.flow_plot_png(result)  # warm-up: first matplotlib use loads fonts
            t = interleaved({"read": lambda: pd.read_csv(reference),
                             "full": lambda: cm.flow_plot_png(cm.analyze(path))}, args.repeat)
            plot = interleaved({"plot": lambda: cm.flow_plot_png(result)}, 3)
            rows.append((label, f"{len(result.time):,}", f"{size_mb:.0f}",
                         f"{t.median('read'):.2f} / {t.min('read'):.2f}",
                         f"{t.median('full'):.2f} / {t.min('full'):.2f}",
                         f"**{t.paired_ratio('full', 'read'):.2f}**",
                         f"{t.median('full') / t.median('read'):.2f}",
                         f"{t.min('full') / t.min('read'):.2f}",
                         f"{t.paired_ratio('full', 'read', cpu=True):.2f}",
                         f"{plot.median('plot'):.2f}", f"{peak_rss_mb(path, code):.0f}",
                         f"{result.breaths}/{truth['breaths']}", f"{result.apnea_count}/{truth['apnea_count']}",
                         str(len(result.skipped_lines))))
            print(f"done {label}", file=sys.stderr)
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
          f"{args.repeat} rounds", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
