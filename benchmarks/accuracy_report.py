"""Accuracy of the analysis on seeded synthetic sets (the tests' sets, optionally larger).

    python benchmarks/accuracy_report.py [--plain 32] [--hard 40] [--clinical 300]

Prints a markdown table: breath count exact / within +-1, apnea count exact, breath rate
within 0.5 /min, mean absolute breath-time error; and per hard-case kind. With
``--clinical N``, a second table over N clinical nights (issue #13's targets): hypopnea and
apnea count exact, median tidal volume and minute ventilation within 10 %, leak rate within
1.5 L/min.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import numpy as np

import cpap_measurements as cm
from tools.cpap_synth import HARD_KINDS, clinical_config, generate, hard_config, plain_config


def score(make_config, n):
    rows = []
    for seed in range(n):
        content, truth = generate(make_config(seed))
        r = cm.analyze(content)
        timing = np.nan
        if r.breaths == truth["breaths"] and r.breaths:
            timing = float(np.mean(np.abs(r.breath_times - np.array(truth["breath_times"]))))
        rows.append(dict(seed=seed, db=r.breaths - truth["breaths"], da=r.apnea_count - truth["apnea_count"],
                         drate=r.breath_rate_bpm - truth["breath_rate_bpm"], timing=timing,
                         kind=HARD_KINDS[seed % len(HARD_KINDS)]))
    return rows


def line(name, rows):
    n = len(rows)
    pct = lambda k: f"{100 * sum(k(r) for r in rows) / n:.1f} %"  # noqa: E731
    timing = np.nanmean([r["timing"] for r in rows]) * 1000
    return (f"| {name} | {n} | {pct(lambda r: r['db'] == 0)} | {pct(lambda r: abs(r['db']) <= 1)} | "
            f"{pct(lambda r: r['da'] == 0)} | {pct(lambda r: abs(r['drate']) <= 0.5)} | {timing:.0f} ms |")


#: issue #13's accuracy criteria: name -> (test of one night's result against its truth, target %)
CLINICAL_CRITERIA = {
    "hypopneas exact": (lambda r, t: r.hypopnea_count == t["hypopnea_count"], 95.0),
    "apneas exact": (lambda r, t: r.apnea_count == t["apnea_count"], 99.0),
    "tidal volume within 10 %": (lambda r, t: abs(r.tidal_volume_l / t["tidal_volume_l"] - 1) <= 0.1, 95.0),
    "minute ventilation within 10 %": (
        lambda r, t: abs(r.minute_ventilation_lpm / t["minute_ventilation_lpm"] - 1) <= 0.1, 95.0),
    "leak within 1.5 L/min": (lambda r, t: abs(r.leak_rate_lpm - t["leak_rate_lpm"]) <= 1.5, 95.0),
}


def clinical_table(n) -> list:
    """Markdown lines: the share of ``n`` clinical nights meeting each of issue #13's criteria."""
    hits = defaultdict(int)
    events = 0
    for seed in range(n):
        content, truth = generate(clinical_config(seed))
        result = cm.analyze(content)
        events += truth["hypopnea_count"] + truth["apnea_count"]
        for name, (ok, _) in CLINICAL_CRITERIA.items():
            hits[name] += bool(ok(result, truth))
            if not ok(result, truth):
                print(f"miss: clinical seed {seed}: {name}", file=sys.stderr)
    lines = [f"{n} clinical nights (10-15 min, {events} true events)", "",
             "| criterion | nights meeting it | target |", "|---|---|---|"]
    lines += [f"| {name} | {100 * hits[name] / n:.1f} % | >= {target:.0f} % |"
              for name, (_, target) in CLINICAL_CRITERIA.items()]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plain", type=int, default=32)
    parser.add_argument("--hard", type=int, default=40)
    parser.add_argument("--clinical", type=int, default=0, help="clinical nights (issue #13), e.g. 300")
    args = parser.parse_args(argv)
    plain, hard = score(plain_config, args.plain), score(hard_config, args.hard)
    print("| set | recordings | breaths exact | breaths +-1 | apneas exact | rate within 0.5 /min "
          "| mean peak-time error |")
    print("|---|---|---|---|---|---|---|")
    print(line("plain", plain))
    print(line("hard (all)", hard))
    by_kind = defaultdict(list)
    for r in hard:
        by_kind[r["kind"]].append(r)
    for kind in HARD_KINDS:
        print(line(f"hard: {kind}", by_kind[kind]))
    misses = [r for r in plain + hard if r["db"] or r["da"]]
    for r in misses:
        print(f"miss: seed {r['seed']} ({r['kind']}): breaths {r['db']:+d}, apneas {r['da']:+d}", file=sys.stderr)
    if args.clinical:
        print()
        print("\n".join(clinical_table(args.clinical)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
