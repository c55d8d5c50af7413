"""The live night's incremental analysis against the offline one (issue #14).

    python -m benchmarks.bench_incremental [--nights 40] [--hours 8]

Prints two markdown tables:

1. agreement: clinical synthetic nights (10-15 min, apneas, hypopneas, leak) streamed in
   chunks of 10 s, 1 s, 37.3 s and uneven random sizes, against ``cpap_measurements.analyze``
   of the whole file: share of nights with the same breath, apnea and hypopnea counts, with
   every breath time and event identical;
2. speed and size on one long night streamed in 10 s chunks: time per chunk (p50, p99, max),
   the whole night streamed vs the offline analysis of the file, the state's largest BSON size.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import cpap_measurements as cm
from sleeplab.analysis import incremental as inc
from tools.cpap_synth import SynthConfig, clinical_config, generate

LINES_PER_S = 100
CHUNKINGS = {"10 s": [1000], "1 s": [100], "37.3 s": [3730], "random 0.01-40 s": None}


def chunks_of(content: bytes, sizes) -> list:
    lines = content.splitlines(keepends=True)
    header, lines = lines[0], lines[1:]
    out, i = [], 0
    while i < len(lines):
        n = sizes[len(out) % len(sizes)]
        out.append(b"".join(lines[i:i + n]))
        i += n
    out[0] = header + out[0]
    return out


def stream(chunks):
    """Feed every chunk and finish: final state, breaths, events, per-chunk wall and CPU
    seconds (the CPU time is what other jobs on a shared machine do not inflate), max size."""
    state, breaths, events, seconds, size = None, [], [], [], 0
    for chunk in chunks:
        began, began_cpu = time.perf_counter(), time.thread_time()
        state, update = inc.feed(state, chunk)
        seconds.append((time.perf_counter() - began, time.thread_time() - began_cpu))
        breaths += update["breaths"]
        events += update["events"]
        size = max(size, inc.state_size_bytes(state))
    began, began_cpu = time.perf_counter(), time.thread_time()
    state, update = inc.finish(state)
    seconds.append((time.perf_counter() - began, time.thread_time() - began_cpu))
    return state, breaths + update["breaths"], events + update["events"], seconds, size


def agreement(n_nights: int) -> list:
    lines = [f"Agreement over {n_nights} clinical nights (chunked vs `cpap_measurements.analyze`)", "",
             "| chunks | breaths exact | apneas exact | hypopneas exact | breath times and events identical "
             "| largest state |", "|---|---|---|---|---|---|"]
    nights = [generate(clinical_config(seed))[0] for seed in range(n_nights)]
    offline = [cm.analyze(content) for content in nights]
    for name, sizes in CHUNKINGS.items():
        hits = np.zeros(4)
        largest = 0
        for seed, (content, result) in enumerate(zip(nights, offline)):
            sizes_here = sizes or np.random.default_rng(seed).integers(1, 4000, size=1000).tolist()
            state, breaths, events, _, size = stream(chunks_of(content, sizes_here))
            totals = state["totals"]
            largest = max(largest, size)
            identical = ([b["peak_s"] for b in breaths] == result.breath_times.tolist()
                         and events == [{"type": e.type, "start_s": e.start_s, "end_s": e.end_s}
                                        for e in result.events])
            hits += [totals["breaths"] == result.breaths, totals["apneas"] == result.apnea_count,
                     totals["hypopneas"] == result.hypopnea_count, identical]
        pct = [f"{100 * h / n_nights:.1f} %" for h in hits]
        lines.append(f"| {name} | " + " | ".join(pct) + f" | {largest / 1000:.1f} KB |")
    return lines


def long_night(hours: float) -> list:
    n_events = int(hours * 12)
    cfg = SynthConfig(duration_s=hours * 3600, rate_bpm=14, amplitude_lpm=35, leak_lpm=4.0,
                      apnea_gaps_s=tuple(np.linspace(12, 35, n_events // 2)),
                      hypopnea_durations_s=tuple(np.linspace(15, 35, n_events - n_events // 2)),
                      hypopnea_fraction=0.38, seed=8)
    content, truth = generate(cfg)
    began = time.perf_counter()
    result = cm.analyze(content)
    offline_s = time.perf_counter() - began
    chunks = chunks_of(content, [10 * LINES_PER_S])
    state, _, _, seconds, size = stream(chunks)
    streamed_s = sum(wall_s for wall_s, _ in seconds)
    totals = state["totals"]
    wall_ms, cpu_ms = (np.array(seconds[:-1]) * 1000).T
    percentiles = lambda ms: (f"{np.percentile(ms, 50):.2f} / {np.percentile(ms, 99):.2f} / "  # noqa: E731
                              f"{ms.max():.2f} ms")
    return [f"One {hours:g}-hour night ({len(content) / 1e6:.0f} MB, {result.breaths} breaths, "
            f"{result.apnea_count} apneas, {result.hypopnea_count} hypopneas offline; streamed: "
            f"{totals['breaths']} breaths, {totals['apneas']} apneas, {totals['hypopneas']} hypopneas)", "",
            "| measure | value |", "|---|---|",
            f"| chunks of 10 s | {len(chunks)} |",
            f"| time per chunk p50 / p99 / max, wall | {percentiles(wall_ms)} |",
            f"| time per chunk p50 / p99 / max, CPU | {percentiles(cpu_ms)} |",
            f"| end of night (finish), wall | {seconds[-1][0] * 1000:.1f} ms |",
            f"| whole night streamed (sum of chunks) | {streamed_s:.2f} s |",
            f"| offline analyze of the file | {offline_s:.2f} s |",
            f"| largest state (BSON) | {size / 1000:.1f} KB |"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=40,
                        help="clinical nights for the agreement table (0: only the long night)")
    parser.add_argument("--hours", type=float, default=8.0, help="length of the long night, h")
    args = parser.parse_args(argv)
    if args.nights:
        print("\n".join(agreement(args.nights)))
        print()
    print("\n".join(long_night(args.hours)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
