"""Synthetic CPAP venturi recordings with known truth, in the exact field file format.

The generator builds a flow signal (L/min) breath by breath, records the truth (time of each
inspiratory peak, apnea events = gaps of more than 10 s between consecutive peaks), and turns
the flow into the 7 ADC columns with the exact inverse of the analysis formulas
(flow -> venturi pressure difference -> ADC steps), rounding to integer ADC units so the
quantization of real files (one ADC step ~5 L/min near zero flow) appears by itself.

Hard cases (all optional): leak offset, weak expiration (quantized away), cardiogenic
oscillation, single-sample ADC spikes, double-humped inspirations, pauses just under or
just over 10 s, fast breathing, bad lines and CRLF line endings.

Command line::

    python -m tools.cpap_synth OUT.txt [--seed N] [--duration 120] [--rate 15] [--apneas 2] ...

writes ``OUT.txt`` and ``OUT.truth.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cpap_measurements import APNEA_GAP_S
from sleeplab.analysis.synth import (  # noqa: F401 (FLOW_LPM_PER_SQRT_ADC: the tests' name)
    FLOW_LPM_PER_SQRT_ADC, HEADER, SAMPLE_RATE_HZ, adc_columns, inspiration_shape, recording_lines,
    venturi_adc)

SHALLOW_MIN_LPM = 10.0
MAX_NORMAL_PERIOD_S = 9.0       # keeps ordinary breath-to-breath gaps clear of the 10 s rule
BAD_LINE_KINDS = ("nan", "bad data", "empty field", "too few columns", "too many columns", "blank")


@dataclass
class SynthConfig:
    """Parameters of one synthetic recording (flows in L/min, times in s)."""

    duration_s: float = 120.0
    rate_bpm: float = 15.0
    rate_jitter: float = 0.08          # relative SD of the breath period
    amplitude_lpm: float = 30.0        # inspiratory peak flow
    amplitude_jitter: float = 0.1      # relative SD of the peak flow
    ie_ratio: float = 0.5              # inspiratory / expiratory time
    pause_fraction: float = 0.15       # end-expiratory zero-flow pause, fraction of the period
    apnea_gaps_s: tuple = ()           # gaps between inspiratory peaks to insert (s)
    noise_adc: float = 0.35            # SD of each pressure channel's noise, ADC steps
    cpap_cmh2o: float = 6.5
    leak_lpm: float = 0.0              # constant leak flow added everywhere
    expiration_scale: float = 1.0      # < 0.2 gives an expiration quantized away
    cardiogenic_lpm: float = 0.0       # amplitude of a ~1 Hz oscillation
    cardiogenic_hz: float = 1.1
    spikes_per_min: float = 0.0        # single-sample spikes of 1-2 ADC steps (5-7 L/min)
    double_hump: bool = False          # inspirations with a dip in the middle
    shallow_fraction: float = 0.0      # share of breaths at 35-50 % of the amplitude (>= 10 L/min)
    hypopnea_durations_s: tuple = ()   # runs of reduced breaths lasting about this long (s)
    hypopnea_fraction: float = 0.4     # peak flow of a reduced breath / amplitude_lpm (no jitter)
    bad_lines: int = 0                 # samples replaced by bad lines (every kind in turn)
    blank_lines: int = 0               # blank lines inserted
    crlf: bool = False
    start_time_s: float = 1.5
    time_decimals: int = 3
    seed: int = 0


def _event_slots(n_apneas: int, n_hypopneas: int) -> list:
    """Kinds of the events in time order, each kind spread evenly ("a" apnea, "h" hypopnea)."""
    spread = [((i + 0.5) / n_apneas, "a") for i in range(n_apneas)]
    spread += [((i + 0.5) / n_hypopneas, "h") for i in range(n_hypopneas)]
    return [kind for _, kind in sorted(spread)]


def synth_breaths(cfg: SynthConfig, rng: np.random.Generator):
    """Flow signal and the truth of every breath.

    Returns
    -------
    time_s : numpy.ndarray
    flow_lpm : numpy.ndarray
        Flow, L/min (no leak, no oscillation yet).
    breaths : dict of numpy.ndarray
        Per breath: ``peak_s``, ``start_s`` (inspiration start), ``end_s`` (expiration
        end), ``tidal_volume_l`` (the exact integral of the inspiratory flow, L) and
        ``reduced`` (True inside a hypopnea).
    """
    n = int(round(cfg.duration_s * SAMPLE_RATE_HZ))
    time_s = cfg.start_time_s + np.arange(n) / SAMPLE_RATE_HZ
    flow = np.zeros(n)
    peaks, starts, ends, volumes, reduced = [], [], [], [], []
    fine_u = np.linspace(0, 1, 401)
    t = cfg.start_time_s + 0.5 + rng.uniform(0, 1.0)
    apnea_gaps = list(cfg.apnea_gaps_s)
    hypopnea_durations = list(cfg.hypopnea_durations_s)
    # spread the events over the breaths that fit beside them (a little jitter, never adjacent)
    mean_period = min(60.0 / cfg.rate_bpm, MAX_NORMAL_PERIOD_S)
    n_breaths_est = int((cfg.duration_s - sum(apnea_gaps) - 2.0) / mean_period)
    kinds = _event_slots(len(apnea_gaps), len(hypopnea_durations))
    slots = np.linspace(1, max(1, n_breaths_est - 1), len(kinds) + 2)[1:-1]
    # without hypopneas exactly the former draws, so the recordings of a seed stay the same
    event_after = sorted(set(int(round(p + rng.uniform(-0.3, 0.3))) for p in slots)) if kinds else []
    end_t = time_s[-1] - 0.3
    k = 0
    pending_gap = None
    hypopnea_until_s = -np.inf
    while True:
        period = 60.0 / cfg.rate_bpm * float(np.clip(1 + cfg.rate_jitter * rng.standard_normal(), 0.7, 1.3))
        period = min(period, MAX_NORMAL_PERIOD_S)
        active = period * (1 - cfg.pause_fraction)
        ti = active * cfg.ie_ratio / (1 + cfg.ie_ratio)
        te = active - ti
        amp = cfg.amplitude_lpm * float(np.clip(1 + cfg.amplitude_jitter * rng.standard_normal(), 0.6, 1.4))
        if cfg.shallow_fraction and rng.random() < cfg.shallow_fraction:
            # never below 10 L/min: two ADC steps are ~7 L/min, a smaller breath is lost in quantization
            amp = max(amp * rng.uniform(0.35, 0.5), SHALLOW_MIN_LPM)
        u = fine_u
        shape = inspiration_shape(u, cfg.double_hump)
        peak_t = t + ti * u[np.argmax(shape)]
        if pending_gap is not None:  # shift this breath so its peak is exactly the apnea gap away
            t += pending_gap - (peak_t - peaks[-1])
            peak_t = peaks[-1] + pending_gap
            pending_gap = None
        in_hypopnea = t < hypopnea_until_s
        if in_hypopnea:
            amp = cfg.amplitude_lpm * cfg.hypopnea_fraction
        if t + ti + te > end_t:
            break
        i0, i1, i2 = np.searchsorted(time_s, [t, t + ti, t + ti + te])
        flow[i0:i1] = amp * inspiration_shape((time_s[i0:i1] - t) / ti, cfg.double_hump)
        exp_amp = amp * ti / te * cfg.expiration_scale  # volume out = volume in
        flow[i1:i2] -= exp_amp * np.sin(np.pi * (time_s[i1:i2] - t - ti) / te)
        peaks.append(peak_t)
        starts.append(t)
        ends.append(t + ti + te)
        # the shape's mean over u in [0, 1] times ti is its integral over the inspiration, s
        volumes.append(amp * ti * float(np.mean(shape)) / 60.0)
        reduced.append(in_hypopnea)
        k += 1
        t += period
        if event_after and k == event_after[0]:
            event_after.pop(0)
            if kinds.pop(0) == "a":
                pending_gap = apnea_gaps.pop(0)
            else:
                hypopnea_until_s = t + hypopnea_durations.pop(0)
    breaths = dict(peak_s=np.array(peaks), start_s=np.array(starts), end_s=np.array(ends),
                   tidal_volume_l=np.array(volumes), reduced=np.array(reduced, dtype=bool))
    return time_s, flow, breaths


def synth_flow(cfg: SynthConfig, rng: np.random.Generator):
    """:func:`synth_breaths` with the true inspiratory peak times (s) in place of the
    per-breath truth: ``(time_s, flow_lpm, peak_times_s)``."""
    time_s, flow, breaths = synth_breaths(cfg, rng)
    return time_s, flow, breaths["peak_s"]


def flow_to_adc(flow_lpm: np.ndarray, cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Inverse of the analysis: flow (L/min) -> 7 integer ADC columns (without time).

    The sign picks the branch as in the analysis: inspiration (and zero) on p1-ins with
    p1-exp at the ADC offset, expiration on p1-exp with p1-ins at the offset.
    """
    n = len(flow_lpm)
    p2_adc, p1_adc = venturi_adc(flow_lpm, cfg.cpap_cmh2o, cfg.noise_adc, rng, rng)
    if cfg.spikes_per_min > 0:
        n_spikes = int(cfg.spikes_per_min * n / SAMPLE_RATE_HZ / 60)
        quiet = np.flatnonzero(np.abs(flow_lpm) < 1.0)
        if len(quiet) and n_spikes:
            where = rng.choice(quiet, size=min(n_spikes, len(quiet)), replace=False)
            p1_adc[where] = p2_adc[where] + rng.integers(1, 3, size=len(where))  # 1-2 steps
    return adc_columns(flow_lpm, p2_adc, p1_adc)


def _hypopnea_truth(breaths: dict) -> list:
    """The runs of reduced breaths, from the first one's start to the last one's end (s)."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], breaths["reduced"].view(np.int8), [0]))))
    return [{"start_s": round(float(breaths["start_s"][a]), 4), "end_s": round(float(breaths["end_s"][b - 1]), 4)}
            for a, b in zip(edges[::2], edges[1::2])]


def _clinical_truth(breaths: dict, flow_lpm: np.ndarray, duration_s: float, apnea_count: int) -> dict:
    hypopneas = _hypopnea_truth(breaths)
    volumes = breaths["tidal_volume_l"]
    return {
        "tidal_volumes_l": [round(float(v), 5) for v in volumes],
        "tidal_volume_l": round(float(np.median(volumes)), 5) if len(volumes) else 0.0,
        "minute_ventilation_lpm": round(float(volumes.sum()) / (duration_s / 60.0), 5),
        # the flow's exact mean: the set leak plus what unbalanced breaths leave (weak expiration)
        "leak_rate_lpm": round(float(np.mean(flow_lpm)), 5),
        "hypopnea_count": len(hypopneas),
        "hypopnea_events": hypopneas,
        "ahi": round(3600.0 * (apnea_count + len(hypopneas)) / duration_s, 5),
    }


def _truth(peaks: np.ndarray, time_s: np.ndarray) -> dict:
    gaps = np.diff(peaks)
    events = [{"start": round(float(peaks[i]), 4), "end": round(float(peaks[i + 1]), 4),
               "duration": round(float(gaps[i]), 4)} for i in np.flatnonzero(gaps > APNEA_GAP_S)]
    duration = float(time_s[-1] - time_s[0])
    return {
        "duration": round(duration, 4),
        "breaths": int(len(peaks)),
        "breath_rate_bpm": round(60.0 * len(peaks) / duration, 4),
        "breath_times": [round(float(p), 4) for p in peaks],
        "apnea_count": len(events),
        "apnea_events": events,
    }


def _bad_line(kind: str, row: str) -> str:
    fields = row.split(",")
    if kind == "nan":
        fields[2] = "NaN"
    elif kind == "bad data":
        fields[0] = "bad data"
    elif kind == "empty field":
        fields[3] = ""
    elif kind == "too few columns":
        fields = fields[:4]
    elif kind == "too many columns":
        fields = fields + ["1638"]
    elif kind == "blank":
        fields = [""]
    return ",".join(fields)


def generate(cfg: SynthConfig | None = None, **overrides):
    """Make one recording.

    Parameters
    ----------
    cfg : SynthConfig, optional
    **overrides
        Fields of :class:`SynthConfig` to change.

    Returns
    -------
    content : bytes
        The recording, exactly as a bedside station writes it.
    truth : dict
        ``duration`` (s), ``breaths``, ``breath_rate_bpm``, ``breath_times`` (s),
        ``apnea_count``, ``apnea_events`` (start/end/duration s), ``tidal_volumes_l``
        (each breath, L), ``tidal_volume_l`` (median, L), ``minute_ventilation_lpm``,
        ``leak_rate_lpm`` (the generated flow's mean, L/min), ``hypopnea_count``,
        ``hypopnea_events`` (start_s/end_s: first reduced breath's start to the last one's
        end), ``ahi`` (/h), ``bad_lines`` (1-based line number and kind) and ``config``.
    """
    cfg = dataclasses.replace(cfg or SynthConfig(), **overrides)
    rng = np.random.default_rng(cfg.seed)
    time_s, flow, breaths = synth_breaths(cfg, rng)
    peaks = breaths["peak_s"]
    flow = flow + cfg.leak_lpm
    if cfg.cardiogenic_lpm:
        phase = rng.uniform(0, 2 * np.pi)
        flow = flow + cfg.cardiogenic_lpm * np.sin(2 * np.pi * cfg.cardiogenic_hz * time_s + phase)
    text = recording_lines(time_s, flow_to_adc(flow, cfg, rng), cfg.time_decimals)
    truth = _truth(peaks, time_s)
    truth.update(_clinical_truth(breaths, flow, truth["duration"], truth["apnea_count"]))
    bad = []
    if cfg.bad_lines or cfg.blank_lines:
        rows = text.split("\n")[:-1]
        # never the first or last sample, so the duration stays the truth's
        replace = sorted(rng.choice(np.arange(1, len(rows) - 1), size=cfg.bad_lines, replace=False))
        for j, r in enumerate(replace):
            kind = BAD_LINE_KINDS[j % (len(BAD_LINE_KINDS) - 1)]
            rows[r] = _bad_line(kind, rows[r])
            bad.append([r, kind])
        inserts = sorted(rng.choice(np.arange(1, len(rows) - 1), size=cfg.blank_lines, replace=False),
                         reverse=True)
        for r in inserts:
            rows.insert(r, "")
        # line numbers after the insertions (+1 for the header, +1 for 1-based)
        inserted = np.array(sorted(inserts))
        bad = [{"line": int(r + np.searchsorted(inserted, r, side="right") + 2), "kind": kind}
               for r, kind in bad]
        bad += [{"line": int(r + i + 2), "kind": "blank"} for i, r in enumerate(sorted(inserts))]
        bad.sort(key=lambda b: b["line"])
        text = "\n".join(rows) + "\n"
    truth["bad_lines"] = bad
    truth["config"] = dataclasses.asdict(cfg)
    content = HEADER + "\n" + text
    if cfg.crlf:
        content = content.replace("\n", "\r\n")
    return content.encode("ascii"), truth


def write(path, cfg: SynthConfig | None = None, **overrides) -> dict:
    """Write a recording to ``path`` and its truth to ``path`` with ``.truth.json``."""
    content, truth = generate(cfg, **overrides)
    path = Path(path)
    path.write_bytes(content)
    path.with_suffix(".truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    return truth


# --- Seeded sets used by the tests ---------------------------------------------------------
def plain_config(seed: int) -> SynthConfig:
    """A varied, ordinary recording: rate 6-30 /min, 0-3 apneas of 11-40 s."""
    rng = np.random.default_rng(10_000 + seed)
    n_apneas = int(rng.integers(0, 4))
    return SynthConfig(
        duration_s=float(rng.uniform(120, 180)),
        rate_bpm=6 + 24 * ((0.1 + seed * GOLDEN_FRACTION) % 1),  # evenly covers 6-30 /min
        rate_jitter=float(rng.uniform(0.0, 0.1)),
        amplitude_lpm=float(rng.uniform(15, 50)),
        amplitude_jitter=float(rng.uniform(0.0, 0.15)),
        ie_ratio=float(rng.uniform(0.33, 1.0)),
        pause_fraction=float(rng.uniform(0.0, 0.3)),
        apnea_gaps_s=tuple(float(g) for g in rng.uniform(11, 40, size=n_apneas)),
        noise_adc=float(rng.uniform(0.1, 0.5)),
        cpap_cmh2o=float(rng.uniform(4, 12)),
        start_time_s=float(rng.uniform(0, 3)),
        time_decimals=int(rng.choice([3, 6])),
        seed=seed,
    )


GOLDEN_FRACTION = 0.6180339887498949


HARD_KINDS = ("leak", "weak expiration", "cardiogenic", "spikes", "double hump",
              "pause under 10 s", "pause over 10 s", "fast", "shallow breaths")


def hard_config(seed: int) -> SynthConfig:
    """A recording with one or two of the hard cases (cycled through by seed)."""
    base = plain_config(seed)
    rng = np.random.default_rng(20_000 + seed)
    kinds = {HARD_KINDS[seed % len(HARD_KINDS)], HARD_KINDS[int(rng.integers(len(HARD_KINDS)))]}
    changes = {"rate_bpm": float(rng.uniform(8, 25))}
    if "leak" in kinds:
        changes["leak_lpm"] = float(rng.uniform(2, 8))
    if "weak expiration" in kinds:
        changes["expiration_scale"] = float(rng.uniform(0.05, 0.2))
    if "cardiogenic" in kinds:
        changes["cardiogenic_lpm"] = float(rng.uniform(1.5, 4))
        changes["cardiogenic_hz"] = float(rng.uniform(0.8, 1.4))
        changes["apnea_gaps_s"] = tuple(float(g) for g in rng.uniform(15, 40, size=int(rng.integers(1, 3))))
    if "spikes" in kinds:
        changes["spikes_per_min"] = float(rng.uniform(10, 60))
    if "double hump" in kinds:
        changes["double_hump"] = True
    if "pause under 10 s" in kinds:
        changes["apnea_gaps_s"] = (float(rng.uniform(9.3, 9.7)),) * int(rng.integers(1, 3))
    if "pause over 10 s" in kinds:
        changes["apnea_gaps_s"] = (float(rng.uniform(10.3, 10.7)),) * int(rng.integers(1, 3))
    if "fast" in kinds:
        changes["rate_bpm"] = float(rng.uniform(40, 50))
        changes["amplitude_lpm"] = float(rng.uniform(15, 30))
        changes["apnea_gaps_s"] = base.apnea_gaps_s[:1]
    if "shallow breaths" in kinds:
        changes["shallow_fraction"] = float(rng.uniform(0.1, 0.3))
    changes["double_hump"] = changes.get("double_hump", False) and not any("pause" in k for k in kinds)
    return dataclasses.replace(base, **changes)


def clinical_config(seed: int) -> SynthConfig:
    """A 10-15 min night for the clinical measures: balanced breaths (inspired = expired
    volume) at 30-50 L/min with a known leak of 0-8 L/min, 0-3 apneas of 11-40 s and 0-4
    hypopneas of 15-35 s whose breaths peak at 35-42 % of the amplitude (clearly below 50 %
    of the tidal volume, above the detection's entry threshold)."""
    rng = np.random.default_rng(30_000 + seed)
    return SynthConfig(
        duration_s=float(rng.uniform(600, 900)),
        rate_bpm=float(rng.uniform(8, 25)),
        rate_jitter=float(rng.uniform(0.0, 0.08)),
        amplitude_lpm=float(rng.uniform(30, 50)),
        amplitude_jitter=float(rng.uniform(0.0, 0.1)),
        ie_ratio=float(rng.uniform(0.4, 1.0)),
        pause_fraction=float(rng.uniform(0.0, 0.3)),
        apnea_gaps_s=tuple(float(g) for g in rng.uniform(11, 40, size=int(rng.integers(0, 4)))),
        hypopnea_durations_s=tuple(float(d) for d in rng.uniform(15, 35, size=int(rng.integers(0, 5)))),
        hypopnea_fraction=float(rng.uniform(0.35, 0.42)),
        noise_adc=float(rng.uniform(0.1, 0.5)),
        cpap_cmh2o=float(rng.uniform(4, 12)),
        leak_lpm=float(rng.uniform(0, 8)),
        start_time_s=float(rng.uniform(0, 3)),
        seed=seed,
    )


# --- sample_data/ ---------------------------------------------------------------------------
SAMPLE_RECORDINGS = {
    "normal_15bpm": ("regular breathing, 15/min", dict(duration_s=120, rate_bpm=15, seed=101)),
    "fast_28bpm": ("fast breathing, 28/min", dict(duration_s=90, rate_bpm=28, amplitude_lpm=22, seed=102)),
    "slow_7bpm": ("slow breathing, 7/min", dict(duration_s=150, rate_bpm=7, ie_ratio=0.4, seed=103)),
    "apnea_1": ("one apnea of 18 s", dict(duration_s=120, rate_bpm=14, apnea_gaps_s=(18.0,), seed=104)),
    "apnea_4": ("four apneas of 12-28 s",
                dict(duration_s=180, rate_bpm=16, apnea_gaps_s=(12.0, 20.0, 28.0, 15.0), seed=105)),
    "bad_lines_crlf": ("12 bad lines of every kind + 3 blank lines, CRLF, time from 2.685 s with 6 decimals",
                       dict(duration_s=90, rate_bpm=18, bad_lines=12, blank_lines=3, crlf=True,
                            start_time_s=2.685, time_decimals=6, seed=106)),
    "hard_leak_weak_exp": ("leak +5 L/min, expiration quantized away, spikes, cardiogenic ripple, one 14 s apnea",
                           dict(duration_s=120, rate_bpm=12, leak_lpm=5.0, expiration_scale=0.1,
                                spikes_per_min=30, cardiogenic_lpm=2.5, apnea_gaps_s=(14.0,), seed=107)),
}
SAMPLE_README_HEADER = """# Sample CPAP recordings

Synthetic recordings in the exact bedside file format (header line + 7 comma-separated columns:
time s, V1 p2, V1 p1-ins, V1 p1-exp, V2 p2, V2 p1-ins, V2 p1-exp in ADC units, 100 Hz), made by
`tools/cpap_synth.py` with known truth. Each `NAME.txt` has its truth in `NAME.truth.json` (breath
times = inspiratory peaks, apnea events = gaps of more than 10 s between consecutive breaths,
skipped line numbers, and since issue #13 each breath's tidal volume, the median, minute
ventilation, leak rate = the generated flow's mean, hypopneas and AHI). The table below is written from that truth, not from the analysis;
`tests/test_cpap_sample_data.py` checks the analysis against it.

Regenerate (deterministic) with:

```bash
python -m tools.cpap_synth --sample-data sample_data
```

| file | what | duration (s) | breaths | breath rate (/min) | apneas | apnea times (s) | skipped lines |
|---|---|---|---|---|---|---|---|
"""


def write_sample_data(directory) -> list:
    """Write the sample recordings, their truth and a README table of expected results."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (what, params) in SAMPLE_RECORDINGS.items():
        truth = write(directory / f"{name}.txt", SynthConfig(**params))
        apnea_times = ", ".join(f"{e['start']:.2f}-{e['end']:.2f}" for e in truth["apnea_events"]) or "-"
        rows.append(f"| {name}.txt | {what} | {truth['duration']:.2f} | {truth['breaths']} | "
                    f"{truth['breath_rate_bpm']:.2f} | {truth['apnea_count']} | {apnea_times} | "
                    f"{len(truth['bad_lines'])} |")
    (directory / "README.md").write_text(SAMPLE_README_HEADER + "\n".join(rows) + "\n")
    return rows


#: SynthConfig's tuple fields on the command line: flag and help
LIST_OPTIONS = {
    "apnea_gaps_s": ("--apnea-gaps", "gaps between inspiratory peaks to insert, s (e.g. 15 25)"),
    "hypopnea_durations_s": ("--hypopnea-durations", "runs of reduced breaths to insert, s (e.g. 20 30)"),
}


def main(argv=None) -> int:
    """Command line: write one synthetic recording and its truth."""
    defaults = SynthConfig()
    parser = argparse.ArgumentParser(description="Write a synthetic CPAP recording with known truth.")
    parser.add_argument("out", nargs="?", help="output file; truth goes to OUT.truth.json")
    parser.add_argument("--sample-data", metavar="DIR", help="write the sample_data/ set to DIR and stop")
    parser.add_argument("--preset", choices=["plain", "hard"], help="use the seeded test-set config")
    for f in dataclasses.fields(SynthConfig):
        if f.name in LIST_OPTIONS:
            flag, what = LIST_OPTIONS[f.name]
            parser.add_argument(flag, dest=f.name, type=float, nargs="*", default=None, help=what)
            continue
        kind = type(getattr(defaults, f.name))
        if kind is bool:
            parser.add_argument("--" + f.name.replace("_", "-"), action="store_true")
        else:
            parser.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None)
    args = parser.parse_args(argv)
    if args.sample_data:
        for row in write_sample_data(args.sample_data):
            print(row)
        return 0
    if not args.out:
        parser.error("OUT is required unless --sample-data is given")
    if args.preset == "plain":
        cfg = plain_config(args.seed or 0)
    elif args.preset == "hard":
        cfg = hard_config(args.seed or 0)
    else:
        cfg = defaults
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(SynthConfig)
                 if getattr(args, f.name) not in (None, False)}
    overrides.update({name: tuple(overrides[name]) for name in LIST_OPTIONS if name in overrides})
    truth = write(args.out, cfg, **overrides)
    print(f"{args.out}: {truth['breaths']} breaths, {truth['apnea_count']} apneas, "
          f"{truth['hypopnea_count']} hypopneas, {truth['duration']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
