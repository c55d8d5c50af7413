"""A live titration night (issue #14): the night document a stream of chunks builds, and
what the API answers from it (the running metrics, the titration table).

A night is one document (``live_nights``, ``_id`` = the session id): the incremental
analyser's state (:mod:`sleeplab.analysis.incremental`), its running totals, one *level*
per pressure in force (the rows of the titration table), the final events, the breath
starts of the last minutes and the last minute of flow for the strip chart. The functions
here are pure: :func:`chunk_changes` turns one analysed chunk into the fields the storage
sets in one guarded update (``next_seq`` must still be the chunk's sequence), so two
workers racing on one room can never both apply a chunk.

Times: ``*_s`` are seconds of the night's recording (the samples' own clock); ``*_at``
are server times (UTC). Results are final only once the analysis can no longer change them
(``final_until_s``, up to :data:`incremental.MAX_LAG_S` behind the last sample): every
rate here is over final data.
"""
from __future__ import annotations

import bisect
import datetime as dt
import math

import numpy as np

import cpap_measurements as cm
import validation as v

#: The strip chart: the last minute of flow (the analyser's 4 Hz trace).
TRACE_WINDOW_S = 60.0
#: Breath starts kept for the recent breath rate.
RECENT_BREATHS_S = 600.0
#: The recent breath rate is over this much final data.
RATE_WINDOW_S = 300.0
#: "Events in the last 10 minutes" (of final data).
RECENT_EVENTS_S = 600.0
#: "AHI over the last hour" (of final data).
LAST_HOUR_S = 3600.0
#: Tidal volumes of a level are counted in bins of this width (L) for its median. Only the
#: bins with a count are stored ({"index": count}): the night's document is rewritten with
#: every chunk, and on nx-27017 each array element costs (500 zeros per level did).
TIDAL_BIN_L = 0.01
TIDAL_BINS = 500                    # up to 5 L; a larger volume counts in the last bin
#: A night holds at most this many pressure levels (a titration has tens) and events.
MAX_LEVELS = 500
MAX_NIGHT_EVENTS = v.MAX_EVENTS
#: Digests of the last chunks, to tell a retry (same content) from a conflict.
DIGESTS_KEPT = 64
#: The header a downloaded night starts with when its first chunk had none.
RECORDING_HEADER = "time,p1_ins,p2_ins,p1_exp,p2_exp,p3,p4\n"


def new_night(session_id: str, room: int, mrn: int, now: dt.datetime) -> dict:
    """The document of a night before its first chunk."""
    return {"_id": session_id, "room": room, "mrn": mrn, "started_at": now, "next_seq": 0,
            "state": None, "totals": None, "levels": [], "events": [], "recent_breaths_s": [],
            "trace_f8": b"", "first_time_s": None, "last_time_s": None, "last_chunk_at": None,
            "digests": {}, "ended": False, "has_header": None}


def _level_index(levels: list[dict], time_s: float) -> int:
    """The level in force at ``time_s`` (the last one starting at or before it)."""
    starts = [level["from_s"] for level in levels]
    return max(bisect.bisect_right(starts, time_s) - 1, 0)


def _new_level(pressure_cmh2o: int, from_s: float) -> dict:
    return {"pressure_cmh2o": pressure_cmh2o, "from_s": from_s, "to_s": from_s,
            "duration_s": 0.0, "breaths": 0, "apneas": 0, "hypopneas": 0,
            "inspired_volume_l": 0.0, "leakage_l": 0.0, "tidal_bins": {}}


def _tidal_bins(bins: dict | list) -> dict:
    """A level's counted bins as ``{"index": count}`` (a copy; a night stored before the
    bins were sparse has a list of TIDAL_BINS counts)."""
    if isinstance(bins, list):
        return {str(index): n for index, n in enumerate(bins) if n}
    return dict(bins)


def trace_points(night: dict) -> list[list[float]]:
    """The night's strip chart, ``[time_s, flow_lpm]`` pairs. Stored as float64 pairs in
    one binary field (``trace_f8``): 240 small arrays cost the database more than the rest
    of the document."""
    packed = night.get("trace_f8")
    if packed is None:                              # a night stored as pairs
        return [list(point) for point in night.get("trace") or []]
    return np.frombuffer(bytes(packed), dtype="<f8").reshape(-1, 2).tolist()


def chunk_changes(night: dict, state: dict, update: dict, pressure_cmh2o: int, sequence: int,
                  digest: str, now: dt.datetime, ended: bool, has_header: bool) -> dict:
    """The fields of ``night`` after one analysed chunk (for one ``$set``).

    ``state``/``update`` are what :func:`incremental.feed` returned for the chunk. The
    chunk's samples all ran at ``pressure_cmh2o``: its duration and net flow volume go to
    that level (a new level when the pressure changed); breaths and events go to the level
    in force at their start (they become final up to a few minutes late).
    """
    before = night.get("totals") or {"duration_s": 0.0, "leakage_l": 0.0}
    totals = update["totals"]
    chunk_start_s = night["last_time_s"] if night["last_time_s"] is not None \
        else state["first_time_s"]
    chunk_end_s = state["last_time_s"]
    levels = [dict(level, tidal_bins=_tidal_bins(level["tidal_bins"])) for level in night["levels"]]
    if chunk_end_s is not None:
        if not levels or levels[-1]["pressure_cmh2o"] != pressure_cmh2o:
            if len(levels) >= MAX_LEVELS:
                raise v.ValidationError(f"a night holds at most {MAX_LEVELS} pressure levels",
                                        "pressure_cmh2o", status=409)
            levels.append(_new_level(pressure_cmh2o, chunk_start_s))
        level = levels[-1]
        level["to_s"] = chunk_end_s
        level["duration_s"] += totals["duration_s"] - before["duration_s"]
        level["leakage_l"] += totals["leakage_l"] - before["leakage_l"]
    for breath in update["breaths"]:
        level = levels[_level_index(levels, breath["start_s"])]
        level["breaths"] += 1
        level["inspired_volume_l"] += breath["tidal_volume_l"]
        key = str(min(max(int(breath["tidal_volume_l"] / TIDAL_BIN_L), 0), TIDAL_BINS - 1))
        level["tidal_bins"][key] = level["tidal_bins"].get(key, 0) + 1
    for event in update["events"]:
        level = levels[_level_index(levels, event["start_s"])]
        level["apneas" if event["type"] == "apnea" else "hypopneas"] += 1
    events = night["events"] + update["events"]
    if len(events) > MAX_NIGHT_EVENTS:
        raise v.ValidationError(f"a night holds at most {MAX_NIGHT_EVENTS} events", "samples",
                                status=409)
    final_until_s = totals.get("final_until_s")
    recent = night["recent_breaths_s"] + [b["start_s"] for b in update["breaths"]]
    if final_until_s is not None:
        recent = [t for t in recent if t >= final_until_s - RECENT_BREATHS_S]
    trace = trace_points(night) + [list(point) for point in update["trace"]]
    if trace:
        trace = [p for p in trace if p[0] >= trace[-1][0] - TRACE_WINDOW_S]
    digests = {k: d for k, d in night["digests"].items()
               if int(k) > sequence - DIGESTS_KEPT}
    digests[str(sequence)] = digest
    return {"next_seq": sequence + 1, "state": state, "totals": dict(totals), "levels": levels,
            "events": events, "recent_breaths_s": recent,
            "trace_f8": np.asarray(trace, dtype="<f8").reshape(-1, 2).tobytes(),
            "first_time_s": state["first_time_s"], "last_time_s": chunk_end_s,
            "last_chunk_at": now, "digests": digests, "ended": ended,
            "has_header": night["has_header"] if sequence else has_header,
            "pressure_cmh2o": pressure_cmh2o}


def _per_hour(count: int, duration_s: float) -> float | None:
    return cm.per_hour(count, duration_s) if duration_s > 0 else None


def summary(night: dict) -> dict:
    """What the wall and ``GET /rooms/{room}/live`` show of a night: final-data rates."""
    totals = night.get("totals") or {}
    first_s, final_s = night.get("first_time_s"), totals.get("final_until_s")
    final_duration_s = (final_s - first_s) if final_s is not None and first_s is not None \
        else 0.0
    events = night.get("events") or []
    apneas = sum(e["type"] == "apnea" for e in events)
    last_hour_from_s = (final_s or 0.0) - LAST_HOUR_S
    recent_from_s = (final_s or 0.0) - RECENT_EVENTS_S
    rate_s = min(RATE_WINDOW_S, final_duration_s)
    recent_breaths = [t for t in night.get("recent_breaths_s") or []
                      if final_s is not None and t >= final_s - rate_s]
    duration_s = totals.get("duration_s") or 0.0
    return {
        "session_id": night["_id"], "room": night["room"], "mrn": night["mrn"],
        "started_at": night["started_at"], "last_chunk_at": night.get("last_chunk_at"),
        "pressure_cmh2o": night.get("pressure_cmh2o"), "next_sequence": night["next_seq"],
        "ended": night.get("ended", False),
        "first_time_s": first_s, "last_time_s": night.get("last_time_s"),
        "final_until_s": final_s, "duration_s": duration_s,
        "breaths": totals.get("breaths", 0),
        "breath_rate_bpm": (60.0 * len(recent_breaths) / rate_s) if rate_s > 0 else None,
        "apnea_count": apneas, "hypopnea_count": len(events) - apneas,
        "ahi": _per_hour(len(events), final_duration_s),
        "ahi_last_hour": _per_hour(sum(e["start_s"] >= last_hour_from_s for e in events),
                                   min(LAST_HOUR_S, final_duration_s)),
        "events_last_10_min": sum(e["end_s"] >= recent_from_s for e in events)
        if final_s is not None else 0,
        "leak_rate_lpm": cm.leak_rate_lpm(totals["leakage_l"], duration_s)
        if duration_s > 0 else None,
    }


def _median_from_bins(bins: dict | list) -> float | None:
    counted = sorted((int(index), n) for index, n in _tidal_bins(bins).items())
    count = sum(n for _, n in counted)
    if not count:
        return None
    half, seen = count / 2.0, 0
    for index, n in counted:
        seen += n
        if seen >= half:
            return round((index + 0.5) * TIDAL_BIN_L, 3)
    return None  # pragma: no cover - the loop always reaches half


def titration_rows(night: dict) -> list[dict]:
    """One row per pressure level in force: the table a titration report is built on."""
    started_at, first_s = night["started_at"], night.get("first_time_s") or 0.0
    rows = []
    for level in night.get("levels") or []:
        duration_s = level["duration_s"]
        events = level["apneas"] + level["hypopneas"]
        rows.append({
            "pressure_cmh2o": level["pressure_cmh2o"],
            "from_s": level["from_s"], "to_s": level["to_s"],
            "from_at": started_at + dt.timedelta(seconds=level["from_s"] - first_s),
            "to_at": started_at + dt.timedelta(seconds=level["to_s"] - first_s),
            "minutes": duration_s / 60.0, "breaths": level["breaths"],
            "breath_rate_bpm": 60.0 * level["breaths"] / duration_s if duration_s > 0 else None,
            "apneas": level["apneas"], "hypopneas": level["hypopneas"],
            "ahi": _per_hour(events, duration_s),
            "tidal_volume_l": _median_from_bins(level["tidal_bins"]),
            "leak_rate_lpm": cm.leak_rate_lpm(level["leakage_l"], duration_s)
            if duration_s > 0 else None,
        })
    return rows


def finite(value):
    """JSON-safe: a non-finite float becomes None."""
    return None if isinstance(value, float) and not math.isfinite(value) else value
