"""A live synthetic patient for demonstrating and testing a CPAP titration night.

:class:`VirtualPatient` breathes in chunks of recording lines (the 7 ADC columns, 100 Hz,
one continuous clock) whose apneas and hypopneas depend on the pressure in force: below
the patient's optimal pressure the airway obstructs, the more often the further below
(:func:`event_rate_per_h`); at or above it the patient breathes normally (AHI < 5). The
mask leaks more at high pressure (:func:`leak_lpm`).

Command line (a bedside data logger in a script)::

    python -m sleeplab.virtual_patient --room 3 --mrn 3003 --api http://HOST:PORT [--token T]
        [--chunk-s 10] [--speed 1] [--pressure 6] [--seed N] [--out FILE] [--duration-s S]

It posts each chunk to the streaming route ``POST /api/v1/rooms/{room}/stream`` (see
docs/README-live.md), applies a pressure the monitor commands for the room, and with
``--out`` also appends the lines to a growing recording file. Where the server has no
streaming route yet it says so and, given ``--out``, only writes the file.
"""
from __future__ import annotations

import argparse
import sys
import time
import uuid

import numpy as np

from validation import PRESSURE_MAX_CMH2O, PRESSURE_MIN_CMH2O
from sleeplab.analysis.synth import (HEADER, SAMPLE_RATE_HZ, adc_columns, inspiration_shape,
                                     recording_lines, venturi_adc)

OPTIMAL_PRESSURE_RANGE_CMH2O = (9.0, 14.0)   # drawn per patient when not given
NORMAL_EVENT_RATE_PER_H = 0.5      # at or above the optimum: a rare event (AHI < 5)
JUST_BELOW_EVENT_RATE_PER_H = 10.0  # just below the optimum ...
EVENT_RATE_PER_CMH2O = 12.0        # ... and this many more per hour per cmH2O below it
MAX_EVENT_RATE_PER_H = 70.0
APNEA_SHARE_MILD, APNEA_SHARE_SEVERE = 0.25, 0.45  # of the events; severe: > SEVERE_DEFICIT
SEVERE_DEFICIT_CMH2O = 2.0
APNEA_GAP_RANGE_S = (12.0, 30.0)   # peak to peak across an apnea (> 10 s: the analysis' rule)
HYPOPNEA_RANGE_S = (15.0, 35.0)    # reduced breaths for this long
HYPOPNEA_PEAK_RANGE = (0.35, 0.42)  # of the normal peak flow: clearly under half the volume
RECOVERY_S = 20.0                  # normal breathing after an event (the next one's reference)
BASE_LEAK_LPM = 2.0                # mask leak at low pressure ...
LEAK_FREE_PRESSURE_CMH2O = 4.0
LEAK_LPM_PER_CMH2O2 = 0.08         # ... growing with the square of the pressure above 4 cmH2O
NOISE_ADC = 0.3
TIME_DECIMALS = 2                  # 100 Hz: hundredths of a second
PAUSE_FRACTION = 0.15              # end-expiratory pause, share of the breath period
PERIOD_JITTER = 0.06               # relative SD of the breath period
AMPLITUDE_JITTER = 0.08
STREAM_PATH = "/api/v1/rooms/{room}/stream"
OPENAPI_PATH = "/api/v1/openapi.json"
STREAM_TEMPLATE = "/rooms/{room}/stream"  # how the OpenAPI document names the route
PRESSURE_PATH = "/api/v1/rooms/{room}/pressure"
HALF_SAMPLE_S = 0.5 / SAMPLE_RATE_HZ


def event_rate_per_h(pressure_cmh2o: float, optimal_pressure_cmh2o: float) -> float:
    """Apneas + hypopneas per hour the patient has at a pressure.

    Parameters
    ----------
    pressure_cmh2o, optimal_pressure_cmh2o : float
        The pressure in force and the patient's optimal pressure, cmH2O.

    Returns
    -------
    float
        NORMAL_EVENT_RATE_PER_H at or above the optimum; below it JUST_BELOW_EVENT_RATE_PER_H
        plus EVENT_RATE_PER_CMH2O per cmH2O of deficit, at most MAX_EVENT_RATE_PER_H
        (3 cmH2O below: 46 /h; 4 below: 58 /h). Breathing between events: an event
        and the RECOVERY_S after it take ~45 s, so the AHI scored is lower (about 29 and
        34 /h there, ~11 /h just below the optimum).
    """
    deficit_cmh2o = optimal_pressure_cmh2o - pressure_cmh2o
    if deficit_cmh2o <= 0:
        return NORMAL_EVENT_RATE_PER_H
    return min(JUST_BELOW_EVENT_RATE_PER_H + EVENT_RATE_PER_CMH2O * deficit_cmh2o, MAX_EVENT_RATE_PER_H)


def leak_lpm(pressure_cmh2o: float) -> float:
    """Mask leak at a pressure, L/min: BASE_LEAK_LPM plus LEAK_LPM_PER_CMH2O2 times the
    square of the pressure above LEAK_FREE_PRESSURE_CMH2O (10 cmH2O: 4.9; 20: 22.5)."""
    above_cmh2o = max(0.0, pressure_cmh2o - LEAK_FREE_PRESSURE_CMH2O)
    return BASE_LEAK_LPM + LEAK_LPM_PER_CMH2O2 * above_cmh2o ** 2


class VirtualPatient:
    """A synthetic patient breathing live, chunk by chunk.

    Breaths are planned one at a time when their start falls in the chunk being made,
    from the pressure of that chunk, with a generator of their own; the sensor noise has
    two more generators. So the recording depends only on the seed and the pressure at
    each time, never on how it is cut into chunks.

    Parameters
    ----------
    seed : int
        Makes the patient and the night reproducible.
    optimal_pressure_cmh2o : float, optional
        The pressure at which obstruction stops, cmH2O; drawn from
        OPTIMAL_PRESSURE_RANGE_CMH2O when not given.
    start_time_s : float
        Time of the first sample, s.
    """

    def __init__(self, seed: int, optimal_pressure_cmh2o: float | None = None, start_time_s: float = 0.0):
        seeds = np.random.SeedSequence(seed).spawn(4)
        patient_rng, self._breath_rng, self._p2_rng, self._p1_rng = (np.random.default_rng(s) for s in seeds)
        if optimal_pressure_cmh2o is None:
            optimal_pressure_cmh2o = float(patient_rng.uniform(*OPTIMAL_PRESSURE_RANGE_CMH2O))
        self.optimal_pressure_cmh2o = float(optimal_pressure_cmh2o)
        self.rate_bpm = float(patient_rng.uniform(12.0, 18.0))
        self.amplitude_lpm = float(patient_rng.uniform(28.0, 40.0))
        self.ie_ratio = float(patient_rng.uniform(0.45, 0.8))
        self.start_time_s = float(start_time_s)
        self._sample = 0                     # next sample's index
        self._next_breath_s = self.start_time_s + 1.0 + float(patient_rng.uniform(0.0, 1.0))
        self._breaths: list = []             # planned: (start_s, ti_s, te_s, peak_lpm)
        self._hypopnea_until_s = -np.inf
        self._quiet_until_s = self.start_time_s + RECOVERY_S  # a reference before any event
        #: the events the patient was given: {type, start_s, end_s} (breath starts / peaks)
        self.events: list = []

    @property
    def time_s(self) -> float:
        """Time of the next sample, s."""
        return self.start_time_s + self._sample / SAMPLE_RATE_HZ

    def next_chunk(self, duration_s: float, pressure_cmh2o: float, header: bool = False) -> str:
        """The next ``duration_s`` of recording at a pressure.

        Parameters
        ----------
        duration_s : float
            Length of the chunk, s (rounded to whole samples at 100 Hz; not negative).
        pressure_cmh2o : float
            The CPAP pressure in force during the chunk, cmH2O.
        header : bool
            Start with the recording's header line (the first chunk of a file).

        Returns
        -------
        str
            Recording lines (LF-terminated): time and the 6 ADC columns.

        Raises
        ------
        ValueError
            If ``duration_s`` is negative or ``pressure_cmh2o`` not a finite number.
        """
        if not duration_s >= 0:
            raise ValueError(f"duration_s must be a duration in s, not {duration_s!r}")
        if not np.isfinite(pressure_cmh2o):
            raise ValueError(f"pressure_cmh2o must be a number, not {pressure_cmh2o!r}")
        n = int(round(duration_s * SAMPLE_RATE_HZ))
        index = self._sample + np.arange(n)
        time_s = self.start_time_s + index / SAMPLE_RATE_HZ
        end_s = self.start_time_s + (self._sample + n) / SAMPLE_RATE_HZ
        while self._next_breath_s < end_s:
            self._plan_breath(pressure_cmh2o)
        flow = np.full(n, leak_lpm(pressure_cmh2o))
        kept = []
        for breath in self._breaths:
            self._draw(breath, time_s, flow)
            if breath[0] + breath[1] + breath[2] >= end_s:
                kept.append(breath)
        self._breaths = kept
        p2_adc, p1_adc = venturi_adc(flow, pressure_cmh2o, NOISE_ADC, self._p2_rng, self._p1_rng,
                                     first_sample=self._sample)
        self._sample += n
        text = recording_lines(time_s, adc_columns(flow, p2_adc, p1_adc), TIME_DECIMALS) if n else ""
        return (HEADER + "\n" + text) if header else text

    def _plan_breath(self, pressure_cmh2o: float) -> None:
        """Plan the breath starting at ``_next_breath_s``, and when the next one starts."""
        rng = self._breath_rng
        start_s = self._next_breath_s
        period_s = 60.0 / self.rate_bpm * float(np.clip(1 + PERIOD_JITTER * rng.standard_normal(), 0.8, 1.2))
        active_s = period_s * (1 - PAUSE_FRACTION)
        ti_s = active_s * self.ie_ratio / (1 + self.ie_ratio)
        te_s = active_s - ti_s
        peak_lpm = self.amplitude_lpm * float(np.clip(1 + AMPLITUDE_JITTER * rng.standard_normal(), 0.8, 1.2))
        # the draws of every breath, used or not: the sequence never depends on the events
        event_draw, kind_draw, length_draw, depth_draw = rng.random(4)
        if start_s < self._hypopnea_until_s:
            peak_lpm = self.amplitude_lpm * float(np.interp(depth_draw, [0, 1], HYPOPNEA_PEAK_RANGE))
        self._breaths.append((start_s, ti_s, te_s, peak_lpm))
        self._next_breath_s = start_s + period_s
        if start_s < max(self._quiet_until_s, self._hypopnea_until_s):
            return
        rate_per_h = event_rate_per_h(pressure_cmh2o, self.optimal_pressure_cmh2o)
        if event_draw >= rate_per_h * period_s / 3600.0:
            return
        deficit_cmh2o = self.optimal_pressure_cmh2o - pressure_cmh2o
        apnea_share = APNEA_SHARE_SEVERE if deficit_cmh2o > SEVERE_DEFICIT_CMH2O else APNEA_SHARE_MILD
        if kind_draw < apnea_share:  # no breath for a while: the next peak a gap away
            gap_s = float(np.interp(length_draw, [0, 1], APNEA_GAP_RANGE_S))
            self._next_breath_s = start_s + gap_s
            peak_s = start_s + ti_s / 2
            self.events.append({"type": "apnea", "start_s": peak_s, "end_s": peak_s + gap_s})
            self._quiet_until_s = self._next_breath_s + RECOVERY_S
        else:  # reduced breaths from the next one on
            length_s = float(np.interp(length_draw, [0, 1], HYPOPNEA_RANGE_S))
            self._hypopnea_until_s = self._next_breath_s + length_s
            self.events.append({"type": "hypopnea", "start_s": self._next_breath_s,
                                "end_s": self._hypopnea_until_s})
            self._quiet_until_s = self._hypopnea_until_s + RECOVERY_S

    @staticmethod
    def _draw(breath: tuple, time_s: np.ndarray, flow: np.ndarray) -> None:
        """Add a breath's flow (half-sine inspiration, balanced half-sine expiration)."""
        start_s, ti_s, te_s, peak_lpm = breath
        i0, i1, i2 = np.searchsorted(time_s, [start_s, start_s + ti_s, start_s + ti_s + te_s])
        flow[i0:i1] += peak_lpm * inspiration_shape((time_s[i0:i1] - start_s) / ti_s)
        expiratory_peak_lpm = peak_lpm * ti_s / te_s  # volume out = volume in
        flow[i1:i2] -= expiratory_peak_lpm * np.sin(np.pi * (time_s[i1:i2] - start_s - ti_s) / te_s)


# --- Command line: a bedside logger ---------------------------------------------------------------
class StreamUnavailable(RuntimeError):
    """The server has no streaming route (yet)."""


class Bedside:
    """Posts a virtual patient's chunks to the API and applies commanded pressures.

    Parameters
    ----------
    api : str
        Base URL of the API, e.g. ``http://127.0.0.1:8000``.
    room, mrn : int
        The room and its patient.
    token : str, optional
        An API token (``Authorization: Bearer``).
    session_id : str, optional
        The night's id (a new one by default).
    """

    def __init__(self, api: str, room: int, mrn: int, token: str | None = None,
                 session_id: str | None = None, timeout_s: float = 10.0):
        import requests

        self.api, self.room, self.mrn = api.rstrip("/"), room, mrn
        self.session_id = session_id or uuid.uuid4().hex
        self.sequence = 0
        self.timeout_s = timeout_s
        self.http = requests.Session()
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def post_chunk(self, chunk: str, pressure_cmh2o: int, end: bool = False) -> dict:
        """POST one chunk (``end``: the night's last); the answer's JSON. Raises
        StreamUnavailable on 404/405 from a server without the route, RuntimeError with the
        server's message on another error."""
        body = {"mrn": self.mrn, "session_id": self.session_id, "sequence": self.sequence,
                "pressure_cmh2o": int(pressure_cmh2o), "samples": chunk, "end": end}
        answer = self.http.post(self.api + STREAM_PATH.format(room=self.room), json=body,
                                timeout=self.timeout_s)
        if answer.status_code in (404, 405) and not self.has_stream_route():
            raise StreamUnavailable(f"the server at {self.api} has no streaming route "
                                    f"({STREAM_PATH.format(room=self.room)}) yet")
        if answer.status_code >= 400:
            raise RuntimeError(f"chunk {self.sequence} refused: HTTP {answer.status_code} {answer.text[:300]}")
        self.sequence += 1
        return answer.json() if answer.content else {}

    def has_stream_route(self) -> bool:
        """Whether the server's OpenAPI document lists the streaming route (a 404 is then
        about the room or patient, not a missing route)."""
        answer = self.http.get(self.api + OPENAPI_PATH, timeout=self.timeout_s)
        if answer.status_code != 200:
            return False
        try:
            paths = answer.json().get("paths", {})
        except ValueError:
            return False
        return any(path.endswith(STREAM_TEMPLATE) for path in paths)

    def commanded_pressure(self) -> dict | None:
        """The room's latest pressure command for this patient, or None."""
        answer = self.http.get(self.api + PRESSURE_PATH.format(room=self.room),
                               params={"mrn": self.mrn}, timeout=self.timeout_s)
        return answer.json() if answer.status_code == 200 else None

    def acknowledge(self, command_id: str) -> str | None:
        """Confirm a command is applied from the next chunk on; None when the server took
        the confirmation, else why not (e.g. the command was cancelled: do not apply it)."""
        answer = self.http.post(self.api + PRESSURE_PATH.format(room=self.room)
                                + f"/{command_id}/applied", timeout=self.timeout_s)
        if answer.status_code == 200:
            return None
        try:
            return answer.json().get("message") or f"HTTP {answer.status_code}"
        except ValueError:
            return f"HTTP {answer.status_code}"

    def follow_command(self, pressure_cmh2o: int) -> int:
        """The pressure for the next chunk: a new command for this patient, confirmed to
        the server, else ``pressure_cmh2o`` as it is."""
        command = self.commanded_pressure()
        if not command or command.get("applied") or command.get("cancelled"):
            return pressure_cmh2o
        refused = self.acknowledge(command["id"])
        if refused:
            print(f"room {self.room}: command {command['id']} not applied: {refused}",
                  file=sys.stderr, flush=True)
            return pressure_cmh2o
        print(f"pressure now {command['pressure_cmh2o']} cmH2O (commanded)", flush=True)
        return int(command["pressure_cmh2o"])


def main(argv=None) -> int:
    """Command line: stream a virtual patient into a room (and/or a growing file)."""
    parser = argparse.ArgumentParser(description="Stream a virtual CPAP patient into a room.")
    parser.add_argument("--room", type=int, required=True)
    parser.add_argument("--mrn", type=int, required=True, help="the patient's medical record number")
    parser.add_argument("--api", help="API base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--token", help="API token (Authorization: Bearer)")
    parser.add_argument("--chunk-s", type=float, default=10.0, help="seconds of recording per chunk")
    parser.add_argument("--speed", type=float, default=1.0, help="times real time (e.g. 10 for a quick demo)")
    parser.add_argument("--pressure", type=int, default=6,
                        help=f"starting pressure, whole cmH2O ({PRESSURE_MIN_CMH2O}-"
                             f"{PRESSURE_MAX_CMH2O}, as the API takes it)")
    parser.add_argument("--optimal-pressure", type=float, help="the patient's optimum (default: drawn 9-14 cmH2O)")
    parser.add_argument("--seed", type=int, help="patient seed (default: the MRN)")
    parser.add_argument("--out", help="also append the recording to this file (a growing file)")
    parser.add_argument("--duration-s", type=float, help="stop after this much recording (default: never)")
    args = parser.parse_args(argv)
    if not args.api and not args.out:
        parser.error("give --api, --out or both")
    if not (args.chunk_s > 0 and args.speed > 0):
        parser.error("--chunk-s and --speed must be positive")
    if not PRESSURE_MIN_CMH2O <= args.pressure <= PRESSURE_MAX_CMH2O:
        parser.error(f"--pressure must be {PRESSURE_MIN_CMH2O} to {PRESSURE_MAX_CMH2O} cmH2O")
    patient = VirtualPatient(args.mrn if args.seed is None else args.seed, args.optimal_pressure)
    bedside = Bedside(args.api, args.room, args.mrn, args.token) if args.api else None
    pressure_cmh2o = args.pressure
    print(f"room {args.room}, patient {args.mrn}: optimal pressure "
          f"{patient.optimal_pressure_cmh2o:.1f} cmH2O, starting at {pressure_cmh2o}", flush=True)
    out = open(args.out, "a", encoding="ascii") if args.out else None
    first = True
    try:
        while True:
            began = time.monotonic()
            left_s = None if args.duration_s is None else \
                args.duration_s - (patient.time_s - patient.start_time_s)
            if left_s is not None and left_s < HALF_SAMPLE_S:
                break
            last = left_s is not None and left_s <= args.chunk_s + HALF_SAMPLE_S
            chunk = patient.next_chunk(args.chunk_s if left_s is None else min(args.chunk_s, left_s),
                                       pressure_cmh2o, header=first)
            if out is not None:
                out.write(chunk)
                out.flush()
            if bedside is not None:
                try:
                    bedside.post_chunk(chunk, pressure_cmh2o, end=last)
                    pressure_cmh2o = bedside.follow_command(pressure_cmh2o)
                except StreamUnavailable as exc:
                    print(f"not available yet: {exc}", file=sys.stderr)
                    if out is None:
                        return 2
                    bedside = None  # keep writing the file
                except (RuntimeError, OSError) as exc:  # refused, or the server unreachable
                    print(f"error: room {args.room}: {exc}", file=sys.stderr)
                    return 1
            first = False
            time.sleep(max(0.0, args.chunk_s / args.speed - (time.monotonic() - began)))
    except KeyboardInterrupt:
        pass
    finally:
        if out is not None:
            out.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
