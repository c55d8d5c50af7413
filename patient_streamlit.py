"""Sleep Lab Monitor UI (Streamlit): Patient Station, Monitoring Station and Patients tabs.

The client talks only to the REST API at ``API_URL`` (``/api/v1`` routes, see
docs/api-contract.md); it never touches the database. The recording analysis runs
locally in the patient station with :mod:`cpap_measurements`.

Run with ``streamlit run patient_streamlit.py``. Settings (environment variables):

``API_URL``             base URL of the REST API (default ``http://127.0.0.1:5000``)
``SLEEPLAB_SIGN_IN``    ``1``: people sign in with user name and password (the API's
                        ``POST /api/v1/sessions``); each acts with their own session
``SLEEPLAB_STATION_TOKEN``, ``SLEEPLAB_MONITOR_TOKEN``
                        single-user mode (the quick start, loopback only): bedside
                        actions use the station token, monitor actions the monitor token
``SLEEPLAB_API_TOKEN``  one API token for this screen (without the two above)
                        (none of them: no header, for an API running without access control)
``API_TIMEOUT_S``       seconds to wait for one API answer (default 5)
``STALE_AFTER_MIN``     a room is marked stale after this many minutes without data (15)
``PRESSURE_POLL_S``     how often a patient station asks for a commanded pressure (10, max 30)
``MONITOR_REFRESH_S``   default refresh interval of the monitoring wall (10)

User-supplied text (names) is never passed through ``unsafe_allow_html``. Names are shown
with ``st.text`` or, where only Markdown exists (labels), as a code span (:func:`md_code`):
escaping is not enough there, since Streamlit's Markdown links URLs and e-mail addresses even
in escaped text. Other text that goes into Markdown is escaped with :func:`md_escape`.
"""
from __future__ import annotations

import base64
import copy
import functools
import hashlib
import json
import logging
import math
import os
import re
import string
import time
import uuid
from datetime import datetime, timezone
from http.cookiejar import DefaultCookiePolicy
from pathlib import Path

import numpy as np
import pandas as pd
import requests
import streamlit as st
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from sleeplab.ui_settings import (MONITOR_TOKEN_ENV, SIGN_IN_ENV, STATION_TOKEN_ENV, is_loopback,
                                  sign_in_wanted)
import validation
from sleeplab.api.csv_export import csv_text
from sleeplab.api import models

log = logging.getLogger("sleeplab.ui")

ROOT = Path(__file__).resolve().parent
SAMPLE_DIR = ROOT / "sample_data"
SAMPLE_SUFFIXES = (".txt", ".csv")

PRESSURE_MIN_CMH2O = validation.PRESSURE_MIN_CMH2O  # the API's bounds, checked before sending
PRESSURE_MAX_CMH2O = validation.PRESSURE_MAX_CMH2O
APNEA_ALERT_COUNT = 2           # apnea counts at or above this are shown in red
AHI_ALERT_PER_H = 15.0          # an AHI at or above this (moderate sleep apnea) is shown in red
MAX_ID = validation.MAX_ID      # largest integer every JSON client reads exactly
CHART_MAX_POINTS = 4000         # the zoomable chart gets a min/max envelope of this size
ROOMS_TTL_S = 2                 # below the shortest refresh interval: one fetch per refresh
AUDIT_LIMIT = 50                # audit entries shown for a room (newest first)
TOKEN_ENV = "SLEEPLAB_API_TOKEN"
#: Which screen acts: the API records it with the caller (header X-Sleeplab-Via).
STATION_SIDE, MONITOR_SIDE = "patient-station", "monitoring-station"
VIA_HEADER = "X-Sleeplab-Via"
PATIENTS_TTL_S = 5
IMAGE_TTL_S = 3600              # images of a record never change
PATIENTS_PAGE_SIZE = 100
WALL_COLUMNS = 4
REFRESH_CHOICES_S = {"5 s": 5, "10 s": 10, "15 s": 15, "30 s": 30, "Paused": None}
UPLOAD_SOURCE, SAMPLE_SOURCE, LIVE_SOURCE = "Recording file", "Sample recording", "Live night"
VIRTUAL_PATIENT, GROWING_FILE = "Virtual patient", "Recording file being written"
LIVE_TRACE_S = 60.0             # the bedside's and the monitor's strip chart: the last minute
LIVE_STALE_S = 60.0             # a live room with no chunk for this long is stale
LIVE_EVENTS_ALERT = 3           # events in the last 10 minutes that need attention
LIVE_MAX_CHUNK_S = 60.0         # at most this much of a growing file or a late virtual patient per post
HIGHLIGHT_CSS = "background-color: #fde8e8"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # every time on screen (strftime and Vega-Lite alike)
TREND_BAR_PX = 12
WHOLE_COLUMNS = ("Room", "MRN", "Records", "Pressure (cmH2O)", "Apnea count", "Hypopneas",
                 "Breaths")
DECIMAL_COLUMNS = ("Breath rate (bpm)", "Duration (s)", "AHI (/h)")
#: Event shading of the flow charts: apneas red, hypopneas amber (as in the flow plot).
EVENT_COLOURS = {"apnea": "#d62728", "hypopnea": "#ff9f1c"}
RECORDING_FORMAT = ("A CPAP recording is a text file: a header line, then one line per sample "
                    "with 7 comma-separated numbers (time in s and six pressures), 100 samples "
                    "per second.")
ORDER_CHOICES = ("Room number", "Needs attention first")
#: Wall card states: CSS of the card (by its key's class ``st-key-mon_card_<state>_<room>``)
#: and the legend. Colours are translucent so a dark theme stays readable.
CARD_STYLES = {
    "attention": "border: 4px solid #d62728 !important; background: rgba(214, 39, 40, 0.14);",
    "nodata": "border: 2px dashed #9e9e9e !important; background: rgba(128, 128, 128, 0.08);",
    "ok": "border: 2px solid #2e7d32 !important;",
}
CARD_CSS = "<style>" + "".join(f'div[class*="st-key-mon_card_{state}_"] {{{css}}}'
                               for state, css in CARD_STYLES.items()) + "</style>"
WALL_MODES = ("Auto", "Compact tiles", "Detailed cards")
COMPACT_FROM_ROOMS = 13          # more rooms than three rows of cards: tiles in Auto mode
SMALL_TILES_FROM_ROOMS = 101     # from here a smaller tile, so 200 rooms fit one screen
FILTER_CHOICES = ("All rooms", "Needs attention", "Pending command", "No recent data")
#: Compact tile states: (label in the legend, CSS of the tile's button). A tile is a
#: button keyed ``mon_tile_<state>_<room>`` (the key's class carries the state).
TILE_STYLES = {
    "attention": ("needs attention: apneas, AHI or a command not applied in time",
                  "border: 3px solid #d62728; background: rgba(214, 39, 40, 0.22);"),
    "stale": ("no data for a while", "border: 3px dashed #6d6d6d; "
                                     "background: rgba(128, 128, 128, 0.25);"),
    "pending": ("pressure command waiting for the bedside",
                "border: 3px solid #ef6c00; background: rgba(239, 108, 0, 0.18);"),
    "nodata": ("patient, no CPAP data yet", "border: 2px dashed #9e9e9e;"),
    "free": ("free room", "border: 1px dotted #9e9e9e; opacity: 0.6;"),
    "ok": ("data, no alarm", "border: 2px solid #2e7d32; background: rgba(46, 125, 50, 0.12);"),
}
TILE_SIZES = {  # (tile width and height in px, room-number font px, text font px)
    "normal": (166, 54, 22, 13),
    "small": (118, 38, 15, 11),
}


def wall_css() -> str:
    """CSS of the tile wall and its legend (fixed text only: no user data in CSS/HTML)."""
    css = ['.slw-wall {display: flex; flex-wrap: wrap; gap: 4px; font-family: var(--st-font);}',
           '.slw-tile {box-sizing: border-box; margin: 0; padding: 1px 5px; cursor: pointer; '
           'text-align: left; line-height: 1.2; border-radius: 6px; color: inherit; '
           'background: transparent; font: inherit;}',
           '.slw-tile:hover {filter: brightness(0.93);} '
           '.slw-tile:focus-visible {outline: 3px solid #1f77b4;}',
           '.slw-tile strong {margin-right: 4px;}',
           '.slw-tile div {white-space: nowrap; overflow: hidden; text-overflow: ellipsis; '
           'line-height: 1.2;}',
           '.slw-tile {overflow: hidden; display: flex; flex-direction: column; '
           'justify-content: center;}',
           # the wall is the screen: less empty space above the page's title
           '[data-testid="stMainBlockContainer"] {padding-top: 2rem;}']
    for size, (width_px, height_px, number_px, text_px) in TILE_SIZES.items():
        css.append(f'.slw-{size} .slw-tile {{width: {width_px}px; height: {height_px}px; '
                   f'font-size: {text_px}px;}} '
                   f'.slw-{size} .slw-tile strong {{font-size: {number_px}px;}}')
    for state, (_, style) in TILE_STYLES.items():
        css.append(f'.slw-tile.slw-{state}, span.slw-legend-{state} {{{style}}}')
    css.append('span[class^="slw-legend-"] {display: inline-block; padding: 0 6px; '
               'margin-right: 8px; border-radius: 4px; font-size: 14px;}')
    return "\n".join(css)


#: The JavaScript of the wall: tiles are built with textContent (never HTML from data),
#: a click sends the room number back once (a trigger value).
WALL_JS = """
export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  let wall = parentElement.querySelector(".slw-wall");
  if (!wall) {
    wall = document.createElement("div");
    parentElement.appendChild(wall);
  }
  wall.className = "slw-wall slw-" + data.size;
  wall.replaceChildren(...data.tiles.map((tile) => {
    const button = document.createElement("button");
    button.className = "slw-tile slw-" + tile.state;
    button.dataset.room = String(tile.room);
    button.title = "Room " + tile.room + ": open its detail";
    const head = document.createElement("div");
    const number = document.createElement("strong");
    number.textContent = String(tile.room);
    head.append(number, tile.head);
    const tail = document.createElement("div");
    tail.textContent = tile.tail;
    button.append(head, tail);
    button.onclick = () => setTriggerValue("open", tile.room);
    return button;
  }));
}
"""


def _env_number(name: str, default: float, low: float, high: float) -> float:
    """A numeric setting from the environment, kept within [low, high]."""
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return min(max(value, low), high) if math.isfinite(value) else default


def api_url() -> str:
    """Base URL of the API, read on each run so a changed environment takes effect."""
    return (os.environ.get("API_URL") or "http://127.0.0.1:5000").rstrip("/")


def sign_in_required() -> bool:
    return sign_in_wanted(os.environ)


def single_user_mode() -> bool:
    """The quick start's mode: separate station and monitor tokens, nobody signs in."""
    return not sign_in_required() and any(
        (os.environ.get(name) or "").strip() for name in (STATION_TOKEN_ENV, MONITOR_TOKEN_ENV))


def token_env(side: str) -> str:
    """The variable holding this side's token outside sign-in mode."""
    if single_user_mode():
        return STATION_TOKEN_ENV if side == STATION_SIDE else MONITOR_TOKEN_ENV
    return TOKEN_ENV


def auth_headers(side: str = MONITOR_SIDE) -> dict:
    """The ``Authorization`` header for an action of ``side`` (read on each request):
    the signed-in person's session token, else this side's token from the environment."""
    if sign_in_required():
        token = (st.session_state.get("signin") or {}).get("token") or ""
    else:
        token = (os.environ.get(token_env(side)) or os.environ.get(TOKEN_ENV) or "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


API_TIMEOUT_S = _env_number("API_TIMEOUT_S", 5, 0.5, 60)
STALE_AFTER_MIN = _env_number("STALE_AFTER_MIN", 15, 0, 24 * 60)
PRESSURE_POLL_S = _env_number("PRESSURE_POLL_S", 10, 1, 30)
MONITOR_REFRESH_S = _env_number("MONITOR_REFRESH_S", 10, 5, 30)
#: Live night (issue #14): the bedside posts its new samples every LIVE_CHUNK_S (a
#: virtual patient runs LIVE_SPEED times real time, for demos).
LIVE_CHUNK_S = _env_number("SLEEPLAB_LIVE_CHUNK_S", 10, 0.05, 60)
LIVE_SPEED = _env_number("SLEEPLAB_LIVE_SPEED", 1, 1, 360)
#: A command still not applied after three bedside polls needs someone to look: one poll
#: puts it in the field, the next acknowledges it (after the page drew the field), so an
#: applied command takes up to two polls — two were a false alarm on a working bedside.
COMMAND_OVERDUE_S = 3 * PRESSURE_POLL_S

#: Automatic retries of an upload: on connection errors, a lost answer and 502/503/504
#: (e.g. the database restarting), waiting 0, 1, 2 s. Safe for this POST only because
#: it carries an upload_id: the server answers a repeat with the stored record instead
#: of storing it again. Other changes (a pressure command) are never retried blindly.
UPLOAD_RETRY = Retry(total=3, connect=3, read=3, status=3, other=0, backoff_factor=0.5,
                     status_forcelist=(502, 503, 504), allowed_methods=frozenset({"POST"}),
                     raise_on_status=False)


# --- Text and time helpers --------------------------------------------------------------

_MD_SPECIAL = set(string.punctuation)


def md_escape(text: object) -> str:
    """Escape every Markdown/HTML/LaTeX/directive character so ``text`` renders literally."""
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in str(text))


def md_code(text: object) -> str:
    """``text`` as a Markdown code span: shown exactly as typed. Escaping alone is not
    enough for names: Streamlit's Markdown turns ``www.x.org``, ``http://...`` and e-mail
    addresses in (escaped) text into links; a code span is never linked or interpreted."""
    text = str(text)
    fence = "`" * (1 + max((len(run) for run in re.findall("`+", text)), default=0))
    pad = " " if text[:1] in "` " or text[-1:] in "` " else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def plural(count: int, noun: str) -> str:
    """``1 record``, ``2 records``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def parse_time(iso: str | None) -> datetime | None:
    if not iso:
        return None
    try:
        moment = datetime.fromisoformat(str(iso).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def fmt_time(iso: str | None) -> str:
    """An API time as local wall-clock time ``YYYY-MM-DD HH:MM:SS`` ('—' when missing):
    the one date format of every screen."""
    moment = parse_time(iso)
    return moment.astimezone().strftime(TIME_FORMAT) if moment else "—"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def fmt_number(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def apnea_markdown(count) -> str:
    """Apnea count for ``st.metric``/Markdown: red from APNEA_ALERT_COUNT on."""
    if count is None:
        return "—"
    return f":red[{int(count)}]" if int(count) >= APNEA_ALERT_COUNT else str(int(count))


def ahi_alert(ahi) -> bool:
    return ahi is not None and math.isfinite(ahi) and ahi >= AHI_ALERT_PER_H


def ahi_markdown(ahi) -> str:
    """AHI (events per hour) for ``st.metric``/Markdown: red from AHI_ALERT_PER_H on."""
    text = fmt_number(ahi)
    return f":red[{text}]" if ahi_alert(ahi) else text


def ahi_help(record: dict) -> str:
    """What a record's AHI counts (records stored before hypopneas were counted hold
    apneas only)."""
    if record.get("hypopnea_count") is None:
        return "Apneas per hour (this record was analysed before hypopneas were counted)."
    return (f"Apneas and hypopneas per hour of recording ({plural(record['hypopnea_count'], 'hypopnea')}); "
            f"red from {AHI_ALERT_PER_H:g} (moderate).")


def render_clinical_metrics(record: dict, where) -> None:
    """Hypopneas, tidal volume, minute ventilation and leak rate of a record or an analysis
    (one row of metrics; absent values as —)."""
    cols = where.columns(4)
    cols[0].metric("Hypopneas", fmt_number(record.get("hypopnea_count")),
                   help="Runs of breaths lasting ≥ 10 s with tidal volume ≤ 50 % of the "
                        "preceding 2 minutes' (flow only, no SpO2).")
    cols[1].metric("Tidal volume", f"{fmt_number(record.get('tidal_volume_l'), 2)} L",
                   help="Median inspired volume of a breath.")
    cols[2].metric("Minute ventilation", f"{fmt_number(record.get('minute_ventilation_lpm'))} L/min",
                   help="Inspired volume per minute of recording.")
    cols[3].metric("Leak rate", f"{fmt_number(record.get('leak_rate_lpm'))} L/min",
                   help="Mean net flow: what does not come back.")


def record_alerts(latest: dict | None) -> list[str]:
    """What in a record needs attention: APNEA_ALERT_COUNT apneas or more, an AHI of
    AHI_ALERT_PER_H or more."""
    latest = latest or {}
    alerts = []
    apneas = latest.get("apnea_count")
    if apneas is not None and int(apneas) >= APNEA_ALERT_COUNT:
        alerts.append(plural(int(apneas), "apnea"))
    if ahi_alert(latest.get("ahi")):
        alerts.append(f"AHI {latest['ahi']:.0f}/h")
    return alerts


# --- Input validation (each returns a value or a message naming the field) ----------

def parse_positive_int(text: str, label: str) -> tuple[int | None, str | None]:
    text = (text or "").strip()
    if not text:
        return None, None
    try:
        value = int(text)
    except ValueError:
        entered = md_escape(text)
        return None, f"{label} must be a positive whole number (you entered “{entered}”)."
    if not 1 <= value <= MAX_ID:
        return None, (f"{label} must be a positive whole number, at most {MAX_ID} "
                      f"(you entered {value}).")
    return value, None


def parse_name(text: str) -> tuple[str | None, str | None]:
    """The patient name (optional), checked with the server's own rule: at most
    MAX_NAME_CHARS characters, no control, invisible or text-direction characters."""
    try:
        return validation.text(text or "", "Patient name", validation.MAX_NAME_CHARS), None
    except validation.ValidationError as exc:
        return None, f"{exc.message}."


def parse_pressure(text: str) -> tuple[int | None, str | None]:
    """CPAP pressure in cmH2O: an integer 4–25; anything else is refused, never clamped."""
    text = (text or "").strip()
    if not text:
        return None, None
    rule = (f"CPAP pressure must be a whole number from {PRESSURE_MIN_CMH2O} to "
            f"{PRESSURE_MAX_CMH2O} cmH2O")
    try:
        value = int(text)
    except ValueError:
        return None, f"{rule} (you entered “{md_escape(text)}”)."
    if not PRESSURE_MIN_CMH2O <= value <= PRESSURE_MAX_CMH2O:
        return None, f"{rule} (you entered {value})."
    return value, None


# --- REST API -------------------------------------------------------------------------

class ApiError(Exception):
    """A failed API call, with a message a clinician can act on."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.status = status


@st.cache_resource(show_spinner=False)
def api_session(retry_upload: bool = False) -> requests.Session:
    """The process's pooled HTTP session to the API (one without retries, one with
    :data:`UPLOAD_RETRY`), created once and shared by every browser session and rerun.

    Streamlit runs each browser session's script in its own thread, so the session is
    shared across threads. That is safe as used here: nothing on it is changed after
    creation (credentials, timeout and parameters go with each request), its
    HTTPAdapter's urllib3 pool manager is thread-safe, and cookies are refused, so one
    person's server cookie can never ride along with another person's request. Reusing
    it keeps TCP connections open between calls instead of one handshake per call.
    """
    http = requests.Session()
    http.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))    # refuse all
    if retry_upload:
        adapter = HTTPAdapter(max_retries=UPLOAD_RETRY)
        http.mount("http://", adapter)
        http.mount("https://", adapter)
    return http


def api_call(method: str, path: str, retry: bool = False,
             side: str | None = MONITOR_SIDE, **kwargs) -> requests.Response:
    """One API request with a timeout (per attempt); every failure becomes an
    :class:`ApiError`. ``retry`` (:data:`UPLOAD_RETRY`) only for requests that are safe
    to repeat. ``side``: the screen acting (its credentials; the API records it), None to
    send no credentials (signing in)."""
    base = kwargs.pop("base", None) or api_url()
    if side is not None:
        kwargs["headers"] = {**(kwargs.get("headers") or {}), **auth_headers(side),
                             VIA_HEADER: side}
    try:
        resp = api_session(retry).request(method, f"{base}{path}", timeout=API_TIMEOUT_S,
                                          **kwargs)
    except requests.Timeout:
        raise ApiError(f"The server at {base} did not answer within {API_TIMEOUT_S:g} s. "
                       "Your entries are kept; try again in a moment.") from None
    except requests.ConnectionError:
        raise ApiError(f"Cannot reach the server at {base}. Check that it is running and "
                       "the network is connected. Your entries are kept; try again.") from None
    except requests.RequestException as exc:
        raise ApiError(f"The request to the server failed ({type(exc).__name__}). "
                       "Your entries are kept; try again.") from None
    if resp.status_code >= 400:
        try:
            message = resp.json().get("message") or resp.reason
        except (ValueError, AttributeError):
            message = resp.reason or "unexpected answer"
        if resp.status_code == 401 and side is not None:
            raise ApiError(unauthorized_message(side), status=401)
        if resp.status_code == 403:
            raise ApiError("This screen's access token does not allow this "
                           f"({md_escape(message)}). Ask your administrator for a token "
                           "with the right role. Your entries are kept.", status=403)
        raise ApiError(f"The server refused the request ({resp.status_code}): "
                       f"{md_escape(message)}",
                       status=resp.status_code)
    return resp


def unauthorized_message(side: str) -> str:
    """What a 401 means on this screen; a person's ended session is dropped, so the
    next run asks them to sign in again."""
    if sign_in_required():
        st.session_state.pop("signin", None)
        st.session_state.signin_notice = ("Your sign-in has ended (expired, or signed out "
                                          "elsewhere). Sign in again; your entries are kept.")
        return ("Your sign-in has ended. Sign in again (at the top of the page); your "
                "entries are kept.")
    return ("This screen is not signed in to the server: its access token is "
            f"{'not valid' if auth_headers(side) else 'missing'}. Ask your administrator to "
            f"set {token_env(side)} for this station. Your entries are kept.")


def api_json(method: str, path: str, **kwargs) -> dict:
    resp = api_call(method, path, **kwargs)
    try:
        return resp.json()
    except ValueError:
        raise ApiError(f"The server sent an answer that is not JSON for {path}.") from None


@st.cache_data(ttl=ROOMS_TTL_S, show_spinner=False)
def fetch_rooms(base: str) -> dict:
    """All rooms with patient, latest record and latest command (one request)."""
    return api_json("GET", "/api/v1/rooms", base=base)


@st.cache_data(ttl=PATIENTS_TTL_S, show_spinner=False)
def fetch_patients(base: str) -> list[dict]:
    """Every patient with its latest record, following the pages."""
    patients: list[dict] = []
    page = 1
    while True:
        body = api_json("GET", "/api/v1/patients", base=base,
                        params={"page": page, "per_page": PATIENTS_PAGE_SIZE})
        batch = body.get("patients") or []
        patients.extend(batch)
        if not batch or len(patients) >= int(body.get("total") or 0):
            return patients
        page += 1


@st.cache_data(ttl=PATIENTS_TTL_S, show_spinner=False)
def fetch_patient(base: str, mrn: int) -> dict:
    """One patient and all its records, newest first."""
    return api_json("GET", f"/api/v1/patients/{mrn}", base=base)


@st.cache_data(ttl=IMAGE_TTL_S, max_entries=64, show_spinner=False)
def fetch_image(base: str, record_id: str) -> bytes:
    return api_call("GET", f"/api/v1/records/{record_id}/image", base=base).content


@st.cache_data(ttl=ROOMS_TTL_S, show_spinner=False)
def fetch_audit(base: str, room: int) -> list[dict]:
    """A room's audit trail, newest first (who changed what, from where)."""
    return api_json("GET", f"/api/v1/rooms/{room}/audit", base=base,
                    params={"limit": AUDIT_LIMIT}).get("entries") or []


def fetch_latest_command(room: int, mrn: int) -> dict | None:
    """Latest pressure command for this station's patient ``mrn`` in ``room`` (never
    cached: the bedside must see it). A 409 means another patient occupies the room."""
    try:
        return api_json("GET", f"/api/v1/rooms/{room}/pressure", params={"mrn": mrn},
                        side=STATION_SIDE)
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


#: Which cached fetches each kind of change makes stale (cleared by :func:`after_change`).
STALE_AFTER = {
    "upload": (fetch_rooms, fetch_patients, fetch_patient, fetch_audit),
    "command": (fetch_rooms, fetch_audit),
    "applied": (fetch_rooms, fetch_audit),
    "monitor_refresh": (fetch_rooms, fetch_patient, fetch_audit),
    "patients_refresh": (fetch_patients, fetch_patient),
}


def after_change(kind: str) -> None:
    """The next render must not show what a change of ``kind`` (a key of
    :data:`STALE_AFTER`) made stale: clear those caches."""
    for fetch in STALE_AFTER[kind]:
        fetch.clear()


def refresh_monitor() -> None:
    after_change("monitor_refresh")


def refresh_patients() -> None:
    after_change("patients_refresh")


def post_patient(payload: dict) -> dict:
    """Upload; retried automatically when ``payload`` carries its ``upload_id``."""
    body = api_json("POST", "/api/v1/patients", json=payload,
                    retry=bool(payload.get("upload_id")), side=STATION_SIDE)
    after_change("upload")
    return body


def put_pressure(room: int, pressure_cmh2o: int, mrn: int) -> dict:
    """Command a pressure for patient ``mrn``: the server refuses it (409) when another
    patient occupies the room by now."""
    try:
        body = api_json("PUT", f"/api/v1/rooms/{room}/pressure",
                        json={"pressure_cmh2o": pressure_cmh2o, "mrn": mrn,
                              "source": "monitor"})
    except ApiError as exc:
        if exc.status == 409:          # the room's patient changed: the wall is out of date
            after_change("monitor_refresh")
        raise
    after_change("command")
    return body


def post_applied(room: int, command_id: str) -> dict:
    body = api_json("POST", f"/api/v1/rooms/{room}/pressure/{command_id}/applied",
                    side=STATION_SIDE)
    after_change("applied")
    return body


# --- Analysis (local, cached by file hash) ----------------------------------------------

def chart_frame(time_s: np.ndarray, flow_lpm: np.ndarray,
                max_points: int = CHART_MAX_POINTS) -> pd.DataFrame:
    """Flow for the zoomable chart: all points, or a min/max envelope of long recordings.

    The envelope keeps each bucket's minimum and maximum so breaths and apnea gaps stay
    visible while the browser gets a few thousand points instead of millions.
    """
    n = len(time_s)
    if n <= max_points:
        return pd.DataFrame({"time_s": time_s, "flow_lpm": flow_lpm})
    bucket = math.ceil(n / (max_points // 2))
    usable = (n // bucket) * bucket
    t = time_s[:usable].reshape(-1, bucket)
    f = flow_lpm[:usable].reshape(-1, bucket)
    rows = np.arange(len(f))
    i_min, i_max = f.argmin(axis=1), f.argmax(axis=1)
    first_is_min = i_min <= i_max
    i_a = np.where(first_is_min, i_min, i_max)
    i_b = np.where(first_is_min, i_max, i_min)
    times = np.column_stack([t[rows, i_a], t[rows, i_b]]).ravel()
    flows = np.column_stack([f[rows, i_a], f[rows, i_b]]).ravel()
    return pd.DataFrame({"time_s": times, "flow_lpm": flows})


@st.cache_data(max_entries=16, show_spinner="Analysing the recording…")
def analyse_recording(sha256: str, _data: bytes) -> dict:
    """Analyse one recording once per content hash; errors are cached as a message too."""
    import cpap_measurements      # here, not at the top: only the bedside's analysis needs it

    try:
        result = cpap_measurements.analyze(_data)
        png = cpap_measurements.flow_plot_png(result)
    except cpap_measurements.CpapFileError as exc:
        return {"error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - the page must show a message, not a traceback
        log.exception("analysis failed for %s", sha256)
        return {"error": f"the analysis failed unexpectedly ({type(exc).__name__}: {exc})"}
    # The record's fields as the API's raw-recording route maps them (non-finite: None).
    fields = {name: models.finite_or_none(value) if isinstance(value, float) else value
              for name, value in models.analysis_fields(result).items()}
    return {
        "sha256": sha256,
        **fields,
        "skipped_lines": [(int(s.line_number), str(s.reason)) for s in result.skipped_lines],
        "plot_png": png,
        "chart": chart_frame(np.asarray(result.time), np.asarray(result.flow_lpm)),
    }


def flow_chart(analysis: dict) -> alt.LayerChart:
    import altair as alt          # here, not at the top: a page without charts never loads it

    """Zoomable (x axis) flow chart with apneas and hypopneas shaded in their colours
    (EVENT_COLOURS) and a legend."""
    line = alt.Chart(analysis["chart"]).mark_line(strokeWidth=1).encode(
        x=alt.X("time_s:Q", title="Time (s)", scale=alt.Scale(nice=False, zero=False)),
        y=alt.Y("flow_lpm:Q", title="Flow (L/min)"),
        tooltip=[alt.Tooltip("time_s:Q", format=".2f"), alt.Tooltip("flow_lpm:Q", format=".1f")],
    )
    events = pd.DataFrame(analysis["events"], columns=["type", "start_s", "end_s"])
    shading = alt.Chart(events).mark_rect(opacity=0.22).encode(
        x="start_s:Q", x2="end_s:Q",
        color=alt.Color("type:N", title="Event",
                        scale=alt.Scale(domain=list(EVENT_COLOURS),
                                        range=list(EVENT_COLOURS.values())),
                        legend=alt.Legend(orient="top")),
        tooltip=[alt.Tooltip("type:N", title="Event"),
                 alt.Tooltip("start_s:Q", title="From (s)", format=".1f"),
                 alt.Tooltip("end_s:Q", title="To (s)", format=".1f")])
    return alt.layer(shading, line).interactive(bind_y=False).properties(height=260)


# --- Session state --------------------------------------------------------------------

def safe_callback(callback):
    """Widget callbacks run outside the tabs' guard: turn a failure into a message too."""
    @functools.wraps(callback)
    def wrapper(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - shown as a message, never a traceback
            log.exception("%s failed", callback.__name__)
            st.session_state.ui_error = (
                f"The last action hit an unexpected problem ({type(exc).__name__}). "
                "Your entries are kept; check the server and try again.")
    return wrapper


PATIENT_DEFAULTS = {
    "ps_name": "", "ps_mrn": "", "ps_room": "", "ps_pressure": "",
    "ps_source": UPLOAD_SOURCE, "ps_sample": None,
    "ps_locked": None,           # {"mrn", "room", "since"} after the first successful upload
    "ps_analysis": None,         # analysis of the recording on screen (what Upload sends)
    "ps_unusable": None,         # (file name, reason) of a chosen recording that failed analysis
    "ps_uploaded": {},           # sha256 -> pressure (cmH2O) of each recording already stored
    "ps_message": None,          # (kind, text, entries) result of the last Upload and the
                                 # entries it was about: shown only while they are unchanged
    "ps_notice": None,           # pressure change received from the monitoring station
    "ps_command_id": None,       # id of the last command applied and acknowledged here
    "ps_command_pending": None,  # command put in the field, not yet acknowledged
    "ps_link": None,             # (kind, text) status of the last poll
    "ps_digests": {},            # file token -> sha256, so a file is hashed once
    "ps_pending": None,          # {"digest", "upload_id"} of an upload not yet answered
    "ps_live_source": VIRTUAL_PATIENT,
    "ps_live_path": "",          # the growing recording file (on the station's computer)
    "ps_live": None,             # the running live night (see start_live)
}
MONITOR_DEFAULTS = {
    "mon_interval": (f"{MONITOR_REFRESH_S:g} s" if f"{MONITOR_REFRESH_S:g} s" in REFRESH_CHOICES_S
                     else "10 s"),
    "mon_order": ORDER_CHOICES[0],
    "mon_wall": WALL_MODES[0],
    "mon_filter": FILTER_CHOICES[0],
    "mon_confirm": None,         # {"room", "pressure", "mrn", "name"} awaiting confirmation
    "mon_message": None,         # {"room", "kind", "text"} result of the last command
    "mon_report": None,          # {"room", "mrn", "pdf", "png"} or {"room", "mrn", "error"}
}


def init_session_state() -> None:
    """Session-state defaults, set once per browser session."""
    st.session_state.setdefault("ps_uploader_gen", 0)
    for key, value in {**PATIENT_DEFAULTS, **MONITOR_DEFAULTS}.items():
        if key not in st.session_state:
            st.session_state[key] = copy.deepcopy(value)


def pressure_text() -> str:
    """The pressure the next upload or live chunk sends: a command not yet acknowledged
    (see :func:`hold_commanded_pressure`), else the field's text."""
    pending = st.session_state.get("ps_command_pending")
    if pending is not None:
        return str(pending["pressure_cmh2o"])
    return st.session_state.get("ps_pressure") or ""


def hold_commanded_pressure() -> None:
    """Keep a commanded pressure in the field until the browser reports it back.

    The browser sends the field's value with every run it asks for — another
    fragment's timer, a click — and until it has drawn the commanded value it sends the
    old one, which would replace it (the pressure seen to fall back to 10 after the
    monitor set 14). So, before the field is drawn, a pending command is written into
    it again; once a run finds the browser reporting it, the poll acknowledges it.
    (One field, one key: a new field per command left the old one on screen, faded,
    while the live night's fragment ticked every second.)
    """
    ss = st.session_state
    pending = ss.ps_command_pending
    if pending is not None and ss.get("ps_pressure") != str(pending["pressure_cmh2o"]):
        ss.ps_pressure = str(pending["pressure_cmh2o"])
        pending["drawn"] = False     # drawn again in this run: wait for the next report


@safe_callback
def reset_patient_station() -> None:
    """Forget the patient: entries, recording, results, lock and pending notices."""
    ss = st.session_state
    stop_live()                  # a running night ends with its last samples analysed
    for key, value in PATIENT_DEFAULTS.items():
        ss[key] = copy.deepcopy(value)
    ss.ps_uploader_gen += 1      # a new key empties the file uploader
    set_message("info", "Station reset: ready for the next patient.")


def entries_snapshot() -> tuple:
    """What the station's entries and chosen recording are now (to expire old messages)."""
    ss = st.session_state
    uploaded = ss.get(f"ps_file_{ss.ps_uploader_gen}")
    return (ss.ps_name, ss.ps_mrn, ss.ps_room, pressure_text(), ss.ps_source, ss.ps_sample,
            getattr(uploaded, "file_id", None))


def set_message(kind: str, text: str) -> None:
    """The result of the last action; it disappears once the entries change."""
    st.session_state.ps_message = (kind, text, entries_snapshot())


# --- Patient Station ------------------------------------------------------------------

def _file_digest(token: str, read) -> str:
    digests = st.session_state.ps_digests
    if token not in digests:
        digests[token] = hashlib.sha256(read()).hexdigest()
    return digests[token]


def selected_recording() -> tuple[str, bytes, str] | None:
    """(file name, content, sha256) of the recording chosen on screen, if any."""
    ss = st.session_state
    if ss.ps_source == UPLOAD_SOURCE:
        uploaded = ss.get(f"ps_file_{ss.ps_uploader_gen}")
        if uploaded is None:
            return None
        data = uploaded.getvalue()
        return uploaded.name, data, _file_digest(f"upload:{uploaded.file_id}", lambda: data)
    if not ss.ps_sample:
        return None
    path = SAMPLE_DIR / ss.ps_sample
    try:
        data = path.read_bytes()
        stat = path.stat()
    except OSError as exc:
        st.error(f"The sample {md_escape(ss.ps_sample)} cannot be read: {exc.strerror}.")
        return None
    token = f"sample:{path}:{stat.st_size}:{stat.st_mtime_ns}"
    return path.name, data, _file_digest(token, lambda: data)


def load_chosen_analysis() -> tuple[str, dict] | None:
    """Analyse the recording chosen on screen (cached by content hash) into ``ps_analysis``
    or, when it cannot be used, ``ps_unusable``; returns (file name, analysis or error).

    Called by the page and again by Send: a click on Send while the page is still
    analysing a newly chosen file interrupts that run, which must not leave Send with no
    analysis (it then stored the patient details only, saying no recording was loaded).
    """
    ss = st.session_state
    ss.ps_analysis = ss.ps_unusable = None
    chosen = selected_recording()
    if chosen is None:
        return None
    file_name, data, digest = chosen
    analysis = analyse_recording(digest, data)
    if "error" in analysis:
        ss.ps_unusable = (file_name, analysis["error"])
    else:
        ss.ps_analysis = analysis
    return file_name, analysis


def sample_files() -> list[str]:
    if not SAMPLE_DIR.is_dir():
        return []
    return sorted(p.name for p in SAMPLE_DIR.iterdir()
                  if p.is_file() and p.suffix.lower() in SAMPLE_SUFFIXES)


def upload_payload() -> tuple[dict | None, str | None]:
    """What Upload sends for the entries on screen, or why nothing can be sent."""
    ss = st.session_state
    locked = ss.ps_locked
    mrn, mrn_error = (locked["mrn"], None) if locked else parse_positive_int(ss.ps_mrn, "MRN")
    room, room_error = (locked["room"], None) if locked else parse_positive_int(ss.ps_room,
                                                                                "Room number")
    pressure, pressure_error = parse_pressure(pressure_text())
    name, name_error = parse_name(ss.ps_name)
    for error in (name_error, mrn_error, room_error, pressure_error):
        if error:
            return None, error
    if mrn is None or room is None:
        return None, "Enter the MRN and the room number first."
    if ss.ps_unusable:
        return None, (f"the chosen recording {md_code(ss.ps_unusable[0])} cannot be used (see "
                      "below). Choose another recording, or remove this one to send only the "
                      "patient details.")
    payload = {"mrn": mrn, "room": room}
    if name:
        payload["name"] = name
    analysis = ss.ps_analysis
    # A recording's results are stored once, under the pressure it was made at: after a
    # pressure change the same recording is never stored again under the new pressure.
    if pressure is not None and analysis is not None \
            and analysis["sha256"] not in ss.ps_uploaded:
        payload.update({name: analysis[name] for name in models.ANALYSED_FIELDS})
        payload.update({
            "cpap_pressure_cmh2o": pressure,
            "breath_rate_bpm": analysis["breath_rate_bpm"] or 0.0,
            "flow_image": base64.b64encode(analysis["plot_png"]).decode("ascii"),
        })
        payload = {k: v for k, v in payload.items() if v is not None}
    return payload, None


def details_only_reason() -> str:
    """Why Send to server sends the patient details only (the entries being valid)."""
    ss = st.session_state
    analysis = ss.ps_analysis
    if analysis is None:
        return "No recording is loaded: load one and enter a pressure to send its results."
    pressure, _ = parse_pressure(pressure_text())
    made_at = ss.ps_uploaded.get(analysis["sha256"])
    if made_at is None:
        return "Enter a CPAP pressure to send the recording's results."
    if pressure is None or pressure == made_at:
        return f"This recording is already stored (made at {made_at} cmH2O)."
    return (f"This recording was made at {made_at} cmH2O and is already stored; it is not "
            f"stored again under {pressure} cmH2O. Load the next recording made at "
            f"{pressure} cmH2O to send its results.")


def upload_id_for(payload: dict) -> str:
    """The idempotency key of an upload: a fresh UUID4 for a new upload, the same one
    for its automatic retries and for a press of Upload that re-sends the same entries
    after an attempt that got no clear answer (it may have been stored)."""
    ss = st.session_state
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    if not ss.ps_pending or ss.ps_pending["digest"] != digest:
        ss.ps_pending = {"digest": digest, "upload_id": str(uuid.uuid4())}
    return ss.ps_pending["upload_id"]


@safe_callback
def do_upload() -> None:
    """Upload button callback (runs before the rerun, so the page shows the new lock)."""
    ss = st.session_state
    load_chosen_analysis()
    payload, error = upload_payload()
    if error:
        set_message("error", f"Not uploaded: {error}")
        return
    payload["upload_id"] = upload_id_for(payload)
    try:
        body = post_patient(payload)
    except ApiError as exc:
        if exc.status is not None and exc.status < 500:
            ss.ps_pending = None          # refused for good: a new attempt is a new upload
        set_message("error", f"Not uploaded. {exc.message}")
        return
    ss.ps_pending = None
    record = body.get("record")
    patient = body.get("patient") or {}
    if ss.ps_locked is None:
        since = (record or {}).get("received_at") or patient.get("updated_at") or now_iso()
        ss.ps_locked = {"mrn": payload["mrn"], "room": payload["room"], "since": since}
    if record:
        ss.ps_uploaded[ss.ps_analysis["sha256"]] = payload["cpap_pressure_cmh2o"]
        set_message("success", (
            f"Uploaded at {fmt_time(record.get('received_at'))}: new record for MRN "
            f"{payload['mrn']} in room {payload['room']} "
            f"({payload['cpap_pressure_cmh2o']} cmH2O, "
            f"{fmt_number(payload['breath_rate_bpm'])} bpm, "
            f"{plural(payload['apnea_count'], 'apnea event')})."))
    else:
        set_message("success", f"Patient details saved for MRN {payload['mrn']} in room "
                               f"{payload['room']}; no new record. {details_only_reason()}")


def poll_pressure_command() -> None:
    """Ask the server for a pressure commanded for this station's patient; put it in
    the pressure field and acknowledge it once the field holds it."""
    ss = st.session_state
    locked = ss.ps_locked
    if locked is None:
        return
    room = locked["room"]
    checked = datetime.now().strftime("%H:%M:%S")
    try:
        if ss.ps_command_pending is None:
            command = fetch_latest_command(room, locked["mrn"])
            if is_new_command(command, locked):
                put_command_in_field(command)
                st.rerun()   # a fragment run: redraw the page with the new pressure field
        acknowledge_command(room)
    except ApiError as exc:
        if exc.status == 409:
            ss.ps_link = ("warning", f"Room {room} now has another patient: this station no "
                                     f"longer receives pressure commands for MRN "
                                     f"{locked['mrn']}. Press Reset for the next patient.")
        else:
            ss.ps_link = ("warning", f"Pressure link: last check at {checked} failed. "
                                     f"{exc.message}")
        return
    ss.ps_link = ("ok", f"Pressure link active for room {room}: checks every "
                        f"{PRESSURE_POLL_S:g} s, last check {checked}.")


def is_new_command(command: dict | None, locked: dict) -> bool:
    """An unapplied command not seen yet, given since this patient's first upload.

    Older commands were meant for an earlier stay (the server already hides other
    patients' commands), so a re-admitted patient never gets a stale pressure.
    """
    if not command or command.get("applied") or command.get("cancelled") \
            or command.get("id") == st.session_state.ps_command_id:
        return False
    commanded, since = parse_time(command.get("commanded_at")), parse_time(locked["since"])
    return commanded is None or since is None or commanded >= since


def put_command_in_field(command: dict) -> None:
    """Write the commanded pressure into the pressure field, held there until the browser
    reports it (:func:`hold_commanded_pressure`); :func:`acknowledge_command` then tells
    the server."""
    ss = st.session_state
    ss.ps_pressure = str(int(command["pressure_cmh2o"]))
    ss.ps_command_pending = {"id": command["id"],
                             "pressure_cmh2o": int(command["pressure_cmh2o"]),
                             "commanded_at": command.get("commanded_at"), "drawn": False}


def acknowledge_command(room: int) -> None:
    """Tell the server a pending command is applied — only when a page run has drawn the
    field with it and a later run finds the browser reporting it back (the poll runs
    before the field, so the acknowledgement never announces a value the browser has not
    received; a failed call is repeated on the next poll)."""
    ss = st.session_state
    pending = ss.ps_command_pending
    if pending is None or not pending.get("drawn") \
            or ss.get("ps_pressure") != str(pending["pressure_cmh2o"]):
        return
    post_applied(room, pending["id"])
    ss.ps_command_pending = None
    ss.ps_command_id = pending["id"]
    pressure = pending["pressure_cmh2o"]
    ss.ps_notice = (f"The monitoring station set the CPAP pressure to {pressure} cmH2O "
                    f"(commanded at {fmt_time(pending.get('commanded_at'))}, applied at "
                    f"{datetime.now().strftime('%Y-%m-%d %H:%M:%S')}). "
                    + ("The live night's next samples carry this pressure."
                       if live_running() else "The next upload uses this pressure."))
    st.toast(f"New CPAP pressure: {pressure} cmH2O", icon=":material/air:")


def render_pressure_link() -> None:
    """Live part of the patient station: polls for commands (before the pressure field)."""
    if st.session_state.ps_locked is None:
        st.caption("The pressure link to the monitoring station starts after the first "
                   "upload.")
        return

    def show_link():
        poll_pressure_command()
        kind, text = st.session_state.ps_link or ("ok", "")
        (st.warning if kind == "warning" else st.caption)(text)
        # drawn here, not in the page: the poll that acknowledges runs on its own
        if st.session_state.ps_notice:
            st.info(st.session_state.ps_notice, icon=":material/notifications_active:")

    @st.fragment(run_every=PRESSURE_POLL_S)
    def pressure_link():
        guarded(show_link)       # a fragment's own error must not escape as a traceback

    pressure_link()


def apnea_gap_s() -> float:
    """The analysis' apnea gap (s); the analysis module is loaded once a recording is."""
    import cpap_measurements
    return cpap_measurements.APNEA_GAP_S


def render_analysis(analysis: dict, file_name: str) -> None:
    cols = st.columns(5)
    cols[0].metric("Breath rate", f"{fmt_number(analysis['breath_rate_bpm'])} bpm")
    cols[1].metric("Apnea count", apnea_markdown(analysis["apnea_count"]),
                   help=f"Gaps of more than {apnea_gap_s():g} s between "
                        f"breaths; red from {APNEA_ALERT_COUNT}.")
    cols[2].metric("Breaths", analysis["breaths"])
    cols[3].metric("Duration", f"{analysis['duration_s'] / 60:.1f} min")
    cols[4].metric("Leakage", f"{fmt_number(analysis['leakage_l'], 2)} L")
    cols = st.columns([1, 4])
    cols[0].metric("AHI", ahi_markdown(analysis["ahi"]), help=ahi_help(analysis))
    render_clinical_metrics(analysis, cols[1])
    skipped = analysis["skipped_lines"]
    if skipped:
        line, reason = skipped[0]
        st.caption(f"{plural(len(skipped), 'unreadable line')} skipped, e.g. line {line}: "
                   f"{md_escape(reason)}")
    st.caption(f"Flow of {md_code(file_name)}: breath markers, apneas (red) and hypopneas "
               "(amber)")
    st.image(analysis["plot_png"], width="stretch")
    st.caption("Zoomable flow (scroll to zoom, drag to pan, double-click to reset)")
    st.altair_chart(flow_chart(analysis), width="stretch")
    render_report_downloads(analysis, file_name)


REPORT_MIMES = {"pdf": "application/pdf", "png": "image/png"}


def bedside_report(analysis: dict, fmt: str, pressure_cmh2o: int | None, title: str) -> bytes:
    """The night report of the recording analysed here (no server needed): the same
    picture the API draws of a stored record (``sleeplab.report``)."""
    from sleeplab import report

    return report.render_report([{**analysis, "pressure_cmh2o": pressure_cmh2o}], fmt=fmt,
                                title=title)


def render_report_downloads(analysis: dict, file_name: str) -> None:
    """PDF and PNG of the night report; drawn only when a button is pressed (a second of
    CPU each, on a thread apart from the page)."""
    pressure, _ = parse_pressure(pressure_text())
    stem = Path(file_name).stem or "recording"
    title = f"Night report — {file_name}"
    cols = st.columns([1, 1, 3], vertical_alignment="center")
    for col, fmt in zip(cols, REPORT_MIMES):
        col.download_button(
            f"Night report ({fmt.upper()})", key=f"ps_report_{fmt}",
            data=functools.partial(bedside_report, analysis, fmt, pressure, title),
            file_name=f"{stem}-night-report.{fmt}", mime=REPORT_MIMES[fmt],
            icon=":material/summarize:", on_click="ignore", width="stretch")
    cols[2].caption("One page: flow with events, breath rate, tidal volume and ventilation, "
                    "leak, pressure, and the metrics table.")


def render_patient_station() -> None:
    ss = st.session_state
    st.subheader("Patient Station")
    render_pressure_link()

    left, right = st.columns([2, 3], gap="large")
    with left:
        locked = ss.ps_locked is not None
        st.text_input("Patient name", key="ps_name", placeholder="optional")
        _, name_error = parse_name(ss.ps_name)
        if name_error:
            st.error(name_error)
        st.text_input("MRN (medical record number)", key="ps_mrn", disabled=locked)
        _, mrn_error = parse_positive_int(ss.ps_mrn, "MRN")
        if mrn_error and not locked:
            st.error(mrn_error)
        st.text_input("Room number", key="ps_room", disabled=locked)
        _, room_error = parse_positive_int(ss.ps_room, "Room number")
        if room_error and not locked:
            st.error(room_error)
        hold_commanded_pressure()
        st.text_input(f"CPAP pressure (cmH2O, {PRESSURE_MIN_CMH2O}–{PRESSURE_MAX_CMH2O})",
                      key="ps_pressure")
        if ss.ps_command_pending is not None:
            ss.ps_command_pending["drawn"] = True
        _, pressure_error = parse_pressure(pressure_text())
        if pressure_error:
            st.error(pressure_error)
        if locked:
            st.caption(f":material/lock: MRN {ss.ps_locked['mrn']} and room "
                       f"{ss.ps_locked['room']} are locked for this patient. "
                       "Press Reset for the next patient.")

    with right:
        st.radio("Recording", [UPLOAD_SOURCE, SAMPLE_SOURCE, LIVE_SOURCE], key="ps_source",
                 horizontal=True)
        if ss.ps_source == LIVE_SOURCE:
            render_live_controls()
        elif ss.ps_source == UPLOAD_SOURCE:
            st.file_uploader("Choose recording file (text, 7 columns at 100 Hz)",
                             key=f"ps_file_{ss.ps_uploader_gen}")
        else:
            samples = sample_files()
            if not samples:
                st.warning(f"No sample recordings found in {SAMPLE_DIR}.")
            st.selectbox("Sample file", samples, key="ps_sample", index=None,
                         placeholder="Choose a sample")

    if ss.ps_source == LIVE_SOURCE or ss.ps_live:
        render_live_night()
        if ss.ps_source == LIVE_SOURCE:
            return
    actions = st.container()         # Upload/Reset sit above the (long) analysis results
    chosen = load_chosen_analysis()
    if chosen is not None:
        file_name, analysis = chosen
        if "error" in analysis:
            st.error(f"{md_code(file_name)} is not a usable CPAP recording: "
                     f"{md_escape(analysis['error'])}. {RECORDING_FORMAT} Nothing from this "
                     "file is sent.")
        else:
            render_analysis(analysis, file_name)

    with actions:
        render_upload_actions()


# --- Live night at the bedside (issue #14) ----------------------------------------------
def live_entries() -> tuple[dict | None, str | None]:
    """MRN, room and pressure of a live night from the entries (or why not)."""
    ss = st.session_state
    mrn, mrn_error = parse_positive_int(ss.ps_mrn, "MRN")
    room, room_error = parse_positive_int(ss.ps_room, "Room number")
    pressure, pressure_error = parse_pressure(pressure_text())
    error = mrn_error or room_error or pressure_error
    if error is None and pressure is None:
        error = "enter the CPAP pressure in force"
    return (None, error) if error else ({"mrn": mrn, "room": room, "pressure": pressure}, None)


@safe_callback
def start_live() -> None:
    """Start a live night: a new session; the first chunk admits the patient."""
    ss = st.session_state
    entries, error = live_entries()
    if error:
        ss.ps_live = {"error": f"The live night cannot start: {error}."}
        return
    live = {"session_id": uuid.uuid4().hex, "sequence": 0, "mrn": entries["mrn"],
            "room": entries["room"], "source": ss.ps_live_source, "summary": None,
            "error": None, "trace": [], "last_post": None, "stopped": False, "offset": 0}
    if ss.ps_live_source == VIRTUAL_PATIENT:
        from sleeplab.virtual_patient import VirtualPatient
        live["patient"] = VirtualPatient(entries["mrn"])
    else:
        path = Path(ss.ps_live_path.strip()).expanduser()
        if not ss.ps_live_path.strip() or not path.is_file():
            ss.ps_live = {"error": f"The live night cannot start: no file "
                                   f"{md_code(ss.ps_live_path.strip() or '(none given)')} on "
                                   "this computer. Give the path of the recording file the "
                                   "data logger is writing."}
            return
        live["path"] = str(path)
    ss.ps_live = live


@safe_callback
def stop_live() -> None:
    """End the live night: the last samples are analysed with the end-of-recording rules."""
    live = st.session_state.ps_live
    if live and not live.get("stopped") and live.get("session_id"):
        post_live_chunk(live, "", end=True)
        live["stopped"] = True


def next_live_samples(live: dict, elapsed_s: float) -> str:
    """The new samples since the last post: the virtual patient's next ``elapsed_s`` ×
    LIVE_SPEED seconds at the pressure in the field, or the file's new complete lines."""
    if "patient" in live:
        duration_s = min(elapsed_s * LIVE_SPEED, LIVE_MAX_CHUNK_S * LIVE_SPEED)
        pressure, _ = parse_pressure(pressure_text())
        return live["patient"].next_chunk(duration_s, pressure, header=live["sequence"] == 0)
    with open(live["path"], "rb") as handle:
        handle.seek(live["offset"])
        data = handle.read(8 * 1024 * 1024)
    complete = data[:data.rfind(b"\n") + 1]        # a line still being written waits
    live["offset"] += len(complete)
    return complete.decode("utf-8", errors="replace")


def chunk_trace(samples: str) -> list[list[float]]:
    """[time_s, flow_lpm] of a chunk at ~4 Hz (block means) for the strip chart."""
    import cpap_measurements as cm
    from sleeplab.analysis.reader import CpapFileError, read_chunk

    try:
        chunk = read_chunk(samples.encode("utf-8"), allow_header=True)
    except CpapFileError:
        return []
    if not len(chunk.time):
        return []
    flow_lpm = cm.venturi_flow(chunk.p2, chunk.p1_ins, chunk.p1_exp) * cm.M3S_TO_LPM
    step = 25
    n = len(flow_lpm) // step * step
    if n == 0:
        return []
    return [[float(t), float(f)] for t, f in zip(chunk.time[:n:step],
                                                  flow_lpm[:n].reshape(-1, step).mean(axis=1))]


def post_live_chunk(live: dict, samples: str, end: bool = False,
                    pressure: int | None = None) -> None:
    """POST one chunk at ``pressure`` (default: the field's). Its sequence is kept until
    the server answers, so a retry sends the same chunk again and it is stored once."""
    if pressure is None:
        pressure, _ = parse_pressure(pressure_text())
    body = {"mrn": live["mrn"], "session_id": live["session_id"], "sequence": live["sequence"],
            "pressure_cmh2o": pressure, "samples": samples, "end": end}
    name, _ = parse_name(st.session_state.ps_name)
    if name and live["sequence"] == 0:
        body["name"] = name
    try:
        resp = api_call("POST", f"/api/v1/rooms/{live['room']}/stream", retry=True,
                        side=STATION_SIDE, json=body)
    except ApiError as exc:
        live["error"] = (f"Chunk {live['sequence']} not sent: {exc.message}"
                         + (" The live night stops." if exc.status in (409, 422) else
                            " It is sent again at the next step."))
        live["unsent"] = None if exc.status in (409, 422) else (samples, pressure)
        if exc.status in (409, 422):
            live["stopped"] = True
        return
    live["summary"], live["error"], live["unsent"] = resp.json(), None, None
    live["sequence"] += 1
    live["pressure"] = pressure
    trace = live["trace"] + chunk_trace(samples)
    live["trace"] = [p for p in trace if p[0] >= trace[-1][0] - LIVE_TRACE_S] if trace else []
    ss = st.session_state
    if ss.ps_locked is None:        # the first chunk admitted the patient: link the pressure
        ss.ps_locked = {"mrn": live["mrn"], "room": live["room"],
                        "since": live["summary"].get("started_at") or now_iso()}


def live_step() -> None:
    """One step of the live night (the fragment's clock): post what is new."""
    live = st.session_state.ps_live
    if not live or live.get("stopped") or not live.get("session_id"):
        return
    now = time.monotonic()
    elapsed_s = LIVE_CHUNK_S if live["last_post"] is None else now - live["last_post"]
    if elapsed_s < 0.9 * LIVE_CHUNK_S:
        return
    if parse_pressure(pressure_text())[0] is None:
        live["error"] = "No chunk sent: the pressure field does not hold a valid pressure."
        return
    live["last_post"] = now
    if live.get("unsent"):                     # the same chunk, as it was first sent
        post_live_chunk(live, *live["unsent"][:1], pressure=live["unsent"][1])
        return
    samples = next_live_samples(live, elapsed_s)
    if samples:
        linked = st.session_state.ps_locked is not None
        post_live_chunk(live, samples)
        if not linked and st.session_state.ps_locked is not None:
            st.rerun()   # the whole page: the pressure link (and its poll) starts now


def live_running() -> bool:
    live = st.session_state.ps_live
    return bool(live and live.get("session_id") and not live.get("stopped"))


def render_live_controls() -> None:
    ss = st.session_state
    running = live_running()
    st.radio("Live source", [VIRTUAL_PATIENT, GROWING_FILE], key="ps_live_source",
             horizontal=True, disabled=running,
             help="A virtual patient whose apneas and hypopneas depend on the pressure, "
                  "or a recording file the data logger is still writing (followed as it grows).")
    if ss.ps_live_source == GROWING_FILE:
        st.text_input("Recording file on this computer", key="ps_live_path", disabled=running,
                      placeholder="/data/logger/night.txt")
    cols = st.columns(2)
    cols[0].button("Start live night", key="ps_live_start", on_click=start_live,
                   disabled=running, type="primary", icon=":material/play_arrow:",
                   width="stretch")
    cols[1].button("End live night", key="ps_live_stop", on_click=stop_live,
                   disabled=not running, icon=":material/stop:", width="stretch")
    st.caption(f"Every {LIVE_CHUNK_S:g} s the new samples go to the server with the pressure "
               "in the field; a pressure commanded by the monitor comes into the field and "
               "the following samples carry it.")


def render_live_night() -> None:
    """The running night's metrics and the last minute of flow, on its own clock."""
    @st.fragment(run_every=LIVE_CHUNK_S)
    def live_night():
        guarded(show_live_night)

    live_night()


def show_live_night() -> None:
    live_step()
    live = st.session_state.ps_live
    if not live:
        return
    if live.get("error"):
        st.warning(live["error"])
    summary = live.get("summary")
    if not summary:
        if live.get("session_id") and not live.get("stopped"):
            st.caption("Live night starting: the first samples go to the server now.")
        return
    state = "ended" if summary.get("ended") else ("stopped" if live.get("stopped") else "live")
    st.markdown(f"**Live night, room {summary['room']}** · :{'green' if state == 'live' else 'gray'}"
                f"-badge[{state}] · {plural(summary['next_sequence'], 'chunk')} sent · "
                f"{summary['duration_s'] / 60:.1f} min of recording")
    render_live_metrics(summary, st)
    trace = pd.DataFrame(live.get("trace") or [], columns=["time_s", "flow_lpm"])
    if len(trace):
        st.line_chart(trace, x="time_s", y="flow_lpm", height=180,
                      x_label="time (s)", y_label="flow (L/min)")


def final_lag_text(summary: dict) -> str:
    last, final = summary.get("last_time_s"), summary.get("final_until_s")
    if last is None or final is None:
        return "results are final about 4 minutes after the samples (the analysis' windows)"
    return f"results final up to {max(last - final, 0) / 60:.1f} min before the last sample"


def render_live_metrics(summary: dict, where) -> None:
    """A live night's running metrics (final data only)."""
    cols = where.columns(6)
    cols[0].metric("AHI so far", ahi_markdown(summary.get("ahi")),
                   help="Apneas and hypopneas per hour of final data.")
    cols[1].metric("AHI last hour", ahi_markdown(summary.get("ahi_last_hour")))
    cols[2].metric("Events, 10 min", summary.get("events_last_10_min", 0))
    cols[3].metric("Apneas · hypopneas",
                   f"{summary.get('apnea_count', 0)} · {summary.get('hypopnea_count', 0)}")
    cols[4].metric("Breath rate", f"{fmt_number(summary.get('breath_rate_bpm'))} bpm",
                   help="Over the last 5 minutes of final data.")
    cols[5].metric("Leak rate", f"{fmt_number(summary.get('leak_rate_lpm'))} L/min")
    where.caption(f"Pressure {fmt_number(summary.get('pressure_cmh2o'))} cmH2O · "
                  + final_lag_text(summary))


def render_upload_actions() -> None:
    ss = st.session_state
    payload, error = upload_payload()
    can_upload = payload is not None
    buttons = st.columns([1, 1, 4], vertical_alignment="center")
    # "Send to server", not "Upload": the file picker has its own "Upload" button
    buttons[0].button("Send to server", key="ps_upload", type="primary", on_click=do_upload,
                      disabled=not can_upload, icon=":material/cloud_upload:", width="stretch")
    buttons[1].button("Reset", key="ps_reset", on_click=reset_patient_station,
                      icon=":material/restart_alt:", width="stretch")
    with buttons[2]:
        if error:
            st.caption(f"Send to server is disabled: {error}")
        elif "cpap_pressure_cmh2o" not in payload:
            st.caption(f"Send to server sends the patient details only. {details_only_reason()}")
    if ss.ps_message and ss.ps_message[2] == entries_snapshot():
        kind, text, _ = ss.ps_message
        {"success": st.success, "error": st.error}.get(kind, st.info)(text)


# --- Monitoring Station ---------------------------------------------------------------

def running_night(entry: dict) -> dict | None:
    """The room's live night while it runs (an ended night leaves the record view)."""
    live = entry.get("live")
    return live if live and not live.get("ended") else None


def live_age_s(live: dict, server_time: str | None) -> float | None:
    then, now = parse_time(live.get("last_chunk_at")), parse_time(server_time)
    return None if then is None or now is None else max((now - then).total_seconds(), 0.0)


def live_stale(live: dict, server_time: str | None) -> bool:
    """A live night whose chunks stopped coming (LIVE_STALE_S on the server's clock)."""
    age_s = live_age_s(live, server_time)
    return age_s is not None and age_s > LIVE_STALE_S


def live_alerts(live: dict | None, server_time: str | None) -> list[str]:
    """What in a running night needs attention: AHI of the last hour, events in the last
    10 minutes, chunks that stopped coming."""
    if not live:
        return []
    alerts = []
    if ahi_alert(live.get("ahi_last_hour")):
        alerts.append(f"AHI {live['ahi_last_hour']:.0f}/h last hour")
    if (live.get("events_last_10_min") or 0) >= LIVE_EVENTS_ALERT:
        alerts.append(f"{live['events_last_10_min']} events in 10 min")
    if live_stale(live, server_time):
        alerts.append(f"live data stopped {age_text(live.get('last_chunk_at'), server_time)} ago")
    return alerts


def is_stale(entry: dict, server_time: str | None) -> bool:
    """True when the room has sent nothing (data or patient details) for STALE_AFTER_MIN.

    Measured against the server's clock, so a client with a wrong clock still judges right.
    """
    moments = [parse_time((entry.get("latest") or {}).get("received_at")),
               parse_time((entry.get("patient") or {}).get("since")),
               parse_time((entry.get("live") or {}).get("last_chunk_at"))]
    moments = [m for m in moments if m is not None]
    reference = parse_time(server_time) or datetime.now(timezone.utc)
    return not moments or (reference - max(moments)).total_seconds() > STALE_AFTER_MIN * 60


def command_text(command: dict | None) -> str:
    """Markdown status of a room's latest pressure command."""
    if not command:
        return "No pressure commanded."
    text = (f"{command['pressure_cmh2o']} cmH2O commanded at "
            f"{fmt_time(command.get('commanded_at'))} ")
    if command.get("applied"):
        applied = fmt_time(command.get("applied_at"))
        return text + f":green-badge[:material/check: applied {applied}]"
    return text + ":orange-badge[:material/hourglass_top: waiting for the bedside station]"


def command_overdue(command: dict | None, server_time: str | None) -> bool:
    """A command the bedside has not applied within COMMAND_OVERDUE_S (server clock)."""
    if not command or command.get("applied"):
        return False
    commanded = parse_time(command.get("commanded_at"))
    reference = parse_time(server_time) or datetime.now(timezone.utc)
    return commanded is not None and (reference - commanded).total_seconds() > COMMAND_OVERDUE_S


def room_alerts(entry: dict, server_time: str | None) -> list[str]:
    """Why a room needs attention (empty: it does not): apneas or AHI
    (:func:`record_alerts`), no data, a command not applied in time."""
    alerts = record_alerts(entry.get("latest")) + live_alerts(running_night(entry), server_time)
    if is_stale(entry, server_time):
        alerts.append(f"stale > {STALE_AFTER_MIN:g} min")
    command = entry.get("command")
    if command_overdue(command, server_time):
        alerts.append(f"pending {command['pressure_cmh2o']} cmH2O not applied after "
                      f"{COMMAND_OVERDUE_S:g} s")
    return alerts


def room_state(entry: dict, server_time: str | None) -> str:
    """``attention``, ``nodata`` (no CPAP record yet) or ``ok``: a key of CARD_STYLES."""
    if room_alerts(entry, server_time):
        return "attention"
    return "ok" if entry.get("latest") or running_night(entry) else "nodata"


def tile_state(entry: dict, server_time: str | None) -> str:
    """The compact tile's state, a key of TILE_STYLES (the first that applies):
    ``free``, ``attention`` (apneas or AHI, a command overdue), ``stale``, ``pending`` (a
    command the bedside has not applied yet), ``nodata`` (a patient, no record yet), ``ok``."""
    if not entry.get("patient"):
        return "free"
    latest = entry.get("latest") or {}
    command = entry.get("command")
    live = running_night(entry)
    if live and live_stale(live, server_time):
        return "stale"
    if record_alerts(latest) or live_alerts(live, server_time) \
            or command_overdue(command, server_time):
        return "attention"
    if is_stale(entry, server_time):
        return "stale"
    if command and not command.get("applied"):
        return "pending"
    return "ok" if latest or live else "nodata"


def initials(name: str | None) -> str:
    """Up to three capital initials of the letters-only words of a name (``Ada Lovelace``
    → ``AL``): short enough for a tile, and never markup whatever the name holds."""
    words = re.findall(r"[^\W\d_]+", name or "")
    return "".join(word[0].upper() for word in words[:3])


def age_text(moment: str | None, server_time: str | None, compact: bool = False) -> str:
    """How long ago, on the server's clock: ``45 s``, ``12 min``, ``3 h``, ``2 d``
    (``compact``, for a tile: ``45s``, ``12m``, ``3h``, ``2d``)."""
    then, now = parse_time(moment), parse_time(server_time) or datetime.now(timezone.utc)
    if then is None:
        return "—"
    age_s = max((now - then).total_seconds(), 0)
    for unit_s, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if age_s >= unit_s:
            return f"{age_s // unit_s:.0f}{unit[0] if compact else ' ' + unit}"
    return f"{age_s:.0f}{'s' if compact else ' s'}"


def tile_lines(entry: dict, server_time: str | None, size: str) -> tuple[str, str]:
    """A tile's two lines of plain text after the room number: who and the pressure in
    force, then breath rate, apneas, AHI and
    the age of the latest data (the patient as letters-only initials, or the MRN)."""
    patient = entry.get("patient")
    if not patient:
        return "free", ""
    who = initials(patient.get("name")) or f"MRN {patient.get('mrn', '—')}"
    pressure, _ = pressure_in_force(entry)
    latest = entry.get("latest") or {}
    command = entry.get("command")
    pending = (f"→{command['pressure_cmh2o']}"
               if command and not command.get("applied") else "")
    unit = "" if size == "small" else " cmH2O"
    head = f"{who} · {pressure if pressure is not None else '—'}{pending}{unit}"
    live = running_night(entry)
    if live:
        return head, (f"AHI {fmt_number(live.get('ahi'), 0)} · 1h "
                      f"{fmt_number(live.get('ahi_last_hour'), 0)} · "
                      f"{live.get('events_last_10_min', 0)} ev/10m · "
                      f"{age_text(live.get('last_chunk_at'), server_time, compact=True)}")
    if not latest:
        return head, "no data yet"
    apneas = latest.get("apnea_count")
    rate = latest.get("breath_rate_bpm")
    # whole breaths a minute: the line must fit a tile of 100 on one screen (the card and
    # the detail show the decimal)
    parts = [f"{fmt_number(rate, 0)}/min"]
    parts += [f"{apneas if apneas is not None else '—'} apn"]
    if latest.get("ahi") is not None:
        parts.append(f"AHI {fmt_number(float(latest['ahi']), 0)}")
    parts.append(age_text(latest.get("received_at"), server_time, compact=True))
    return head, " · ".join(parts)


def wall_mode(room_count: int) -> str:
    """``Compact tiles`` or ``Detailed cards`` for the mode chosen (Auto: by room count)."""
    chosen = st.session_state.get("mon_wall", WALL_MODES[0])
    if chosen != WALL_MODES[0]:
        return chosen
    return WALL_MODES[1] if room_count >= COMPACT_FROM_ROOMS else WALL_MODES[2]


def filter_rooms(rooms: list[dict], server_time: str | None, shown: str) -> list[dict]:
    """The rooms the filter (one of FILTER_CHOICES) lets through."""
    if shown == FILTER_CHOICES[1]:
        return [e for e in rooms if room_state(e, server_time) == "attention"]
    if shown == FILTER_CHOICES[2]:
        return [e for e in rooms if (e.get("command") or {}).get("applied") is False]
    if shown == FILTER_CHOICES[3]:
        return [e for e in rooms if e.get("patient") and is_stale(e, server_time)]
    return rooms


def open_tile() -> None:
    """A tile clicked (the wall's trigger value): that room's detail below the wall."""
    room = (st.session_state.get("mon_wall_tiles") or {}).get("open")
    if room is not None:
        st.session_state.mon_room = int(room)


def render_tile_wall(rooms: list[dict], server_time: str | None, legend) -> None:
    """Every room a small tile in one wrapping element, coloured by state; the legend goes
    into ``legend`` (the header's column: the rows of rooms need the height).

    One element for the whole wall (a custom component): a button per room made the
    browser redraw a hundred widgets on every refresh, twice as slow.
    """
    size = "small" if len(rooms) >= SMALL_TILES_FROM_ROOMS else "normal"
    legend.html("<div>" + "".join(f'<span class="slw-legend-{state}">{label}</span>'
                                  for state, (label, _) in TILE_STYLES.items()) + "</div>")
    tiles = []
    for entry in rooms:
        head, tail = tile_lines(entry, server_time, size)
        tiles.append({"room": entry["room"], "state": tile_state(entry, server_time),
                      "head": head, "tail": tail})
    wall_component()(data={"size": size, "tiles": tiles}, key="mon_wall_tiles",
                     on_open_change=open_tile)


@functools.cache
def wall_component():
    """The tile wall's component, registered once per process."""
    return st.components.v2.component("sleeplab_wall", html='<div class="slw-wall"></div>',
                                      css=wall_css(), js=WALL_JS, isolate_styles=False)


def render_card_wall(rooms: list[dict], server_time: str | None) -> None:
    """Every room a detailed card, WALL_COLUMNS a row."""
    st.html(CARD_CSS)                # fixed text only: no user data in HTML
    st.caption(f":red-badge[:material/warning: needs attention] {APNEA_ALERT_COUNT} or more "
               f"apneas, AHI {AHI_ALERT_PER_H:g}/h or more, no data for {STALE_AFTER_MIN:g} min, or a pressure command not "
               f"applied within {COMMAND_OVERDUE_S:g} s · :green-badge[green border] "
               "data, no alarm · :gray-badge[dashed border] no data yet")
    for start in range(0, len(rooms), WALL_COLUMNS):
        cols = st.columns(WALL_COLUMNS)
        for col, entry in zip(cols, rooms[start:start + WALL_COLUMNS]):
            with col:
                render_room_card(entry, server_time)


def order_rooms(rooms: list[dict], server_time: str | None, attention_first: bool) -> list[dict]:
    """Rooms by number; with ``attention_first`` the rooms needing attention lead."""
    def key(entry):
        leads = attention_first and room_state(entry, server_time) == "attention"
        return (not leads, entry.get("room") or 0)
    return sorted(rooms, key=key)


def pressure_in_force(entry: dict) -> tuple[int | None, str]:
    """The CPAP pressure the room runs at now (cmH2O) and where that comes from.

    The newest command applied at the bedside after the latest record is in force;
    otherwise the latest record's pressure (a record is stored under the pressure it was
    made at). A command not yet applied is not in force: it is shown as pending. The
    room list carries both the latest command and the newest applied one, so the wall
    needs no other request.
    """
    latest = entry.get("latest") or {}
    command = entry.get("command")
    applied = command if command and command.get("applied") else entry.get("applied")
    recorded = parse_time(latest.get("received_at"))
    applied_at = parse_time((applied or {}).get("applied_at"))
    live = running_night(entry)
    streamed_at = parse_time((live or {}).get("last_chunk_at"))
    if streamed_at is not None and live.get("pressure_cmh2o") is not None and all(
            streamed_at > moment for moment in (recorded, applied_at) if moment is not None):
        return live["pressure_cmh2o"], f"of the live night's last samples ({fmt_time(live['last_chunk_at'])})"
    if applied_at is not None and (recorded is None or applied_at > recorded):
        return applied["pressure_cmh2o"], f"commanded, applied {fmt_time(applied['applied_at'])}"
    if latest.get("cpap_pressure_cmh2o") is not None:
        return latest["cpap_pressure_cmh2o"], "of the latest record"
    return None, "not known yet"


def render_room_card(entry: dict, server_time: str | None) -> None:
    patient = entry.get("patient") or {}
    latest = entry.get("latest")
    command = entry.get("command")
    state = room_state(entry, server_time)
    badges = []
    alerts = room_alerts(entry, server_time)
    if alerts:
        badges.append(f":red-badge[:material/warning: {' · '.join(alerts)}]")
    if command and not command.get("applied") and not command_overdue(command, server_time):
        badges.append(f":blue-badge[pending {command['pressure_cmh2o']} cmH2O]")
    with st.container(border=True, key=f"mon_card_{state}_{entry['room']}"):
        st.markdown(f"**Room {entry['room']}** " + " ".join(badges))
        if not patient:      # the patient moved to another room (or was never here)
            st.text("Free: no patient in this room")
            return
        st.text(f"MRN {patient.get('mrn', '—')} · {patient.get('name') or 'no name'}")
        pressure, source = pressure_in_force(entry)
        if pressure is not None:
            st.metric("Pressure in force", f"{pressure} cmH2O", help=f"Pressure {source}.")
        live = running_night(entry)
        if live:
            st.markdown(f":green-badge[live] AHI {fmt_number(live.get('ahi'))} so far · "
                        f"{fmt_number(live.get('ahi_last_hour'))} last hour · "
                        f"{live.get('events_last_10_min', 0)} events in 10 min · last samples "
                        f"{age_text(live.get('last_chunk_at'), server_time)} ago")
        if latest is None:
            if not live:
                st.markdown("**No data yet** — no CPAP record from this room.")
            return
        cols = st.columns(3)
        cols[0].metric("bpm", fmt_number(latest.get("breath_rate_bpm")))
        cols[1].metric("apneas", apnea_markdown(latest.get("apnea_count")))
        cols[2].metric("AHI", ahi_markdown(latest.get("ahi")),
                       help=f"Apneas and hypopneas per hour of the latest record; red from "
                            f"{AHI_ALERT_PER_H:g} (moderate).")
        st.caption(f"Latest record made at {fmt_number(latest.get('cpap_pressure_cmh2o'))} "
                   f"cmH2O · {fmt_time(latest.get('received_at'))}")


@safe_callback
def ask_confirm(room: int, mrn: int, name: str | None) -> None:
    """Send… pressed: check the value, then ask to confirm for this patient and room."""
    ss = st.session_state
    pressure, error = parse_pressure(ss.get(f"mon_pressure_{room}", ""))
    if error or pressure is None:
        ss.mon_message = {"room": room, "kind": "error",
                          "text": error or "Enter the new CPAP pressure first."}
        ss.mon_confirm = None
        return
    ss.mon_confirm = {"room": room, "pressure": pressure, "mrn": mrn, "name": name}
    ss.mon_message = None


def patient_words(mrn: int, name: str | None) -> str:
    """``MRN 40 (name)`` for Markdown messages, the name as plain text (a code span)."""
    return f"MRN {mrn}" + (f" ({md_code(name)})" if name else "")


@safe_callback
def send_command(room: int, pressure: int, mrn: int, name: str | None) -> None:
    """Confirm pressed: the command names the patient the monitor showed; the server
    refuses it (409) if another patient occupies the room by now."""
    ss = st.session_state
    ss.mon_confirm = None
    try:
        command = put_pressure(room, pressure, mrn)
    except ApiError as exc:
        if exc.status == 409:
            text = (f"Not sent: the patient in room {room} is no longer "
                    f"{patient_words(mrn, name)}. The wall has been refreshed; check the "
                    "room and send the command again if it is still wanted.")
        else:
            text = f"Not sent. {exc.message}"
        ss.mon_message = {"room": room, "kind": "error", "text": text}
        return
    ss[f"mon_pressure_{room}"] = ""      # sent: an empty field cannot be sent twice by mistake
    ss.mon_message = {"room": room, "kind": "success",
                      "text": f"{pressure} cmH2O sent for {patient_words(mrn, name)} in room "
                              f"{room} at {fmt_time(command.get('commanded_at'))}."}


def cancel_command() -> None:
    st.session_state.mon_confirm = None


def render_pressure_command(entry: dict) -> None:
    ss = st.session_state
    room = entry["room"]
    patient = entry.get("patient")
    st.markdown("**CPAP pressure command**")
    if not patient:
        st.caption(f"Room {room} is free: there is no patient to send a pressure to.")
        return
    st.markdown(command_text(entry.get("command")))
    cols = st.columns([2, 1])
    cols[0].text_input(f"New pressure for room {room} (cmH2O, {PRESSURE_MIN_CMH2O}–"
                       f"{PRESSURE_MAX_CMH2O})", key=f"mon_pressure_{room}")
    cols[1].button("Send…", key=f"mon_send_{room}", on_click=ask_confirm,
                   args=(room, patient["mrn"], patient.get("name")), width="stretch")
    confirm = ss.mon_confirm
    if confirm and confirm["room"] == room:
        st.warning(f"Set the CPAP pressure of **room {room}**, patient "
                   f"**{patient_words(confirm['mrn'], confirm['name'])}**, to "
                   f"**{confirm['pressure']} cmH2O**?")
        yes, no = st.columns(2)
        yes.button("Confirm", key=f"mon_confirm_{room}", type="primary", on_click=send_command,
                   args=(room, confirm["pressure"], confirm["mrn"], confirm["name"]),
                   width="stretch")
        no.button("Cancel", key=f"mon_cancel_{room}", on_click=cancel_command, width="stretch")
    message = ss.mon_message
    if message and message["room"] == room:
        {"success": st.success, "error": st.error}[message["kind"]](message["text"])


AUDIT_ACTIONS = {"patient_created": "Patient added", "name_changed": "Name changed",
                 "room_changed": "Room changed", "record_added": "New CPAP record",
                 "pressure_commanded": "Pressure commanded",
                 "pressure_applied": "Pressure applied at bedside",
                 "pressure_cancelled": "Pressure command cancelled"}


def _audit_value(action: str, value) -> str:
    """One side (old or new) of an audit entry as short plain text."""
    if value is None:
        return "—"
    if not isinstance(value, dict):
        return f"room {value}" if action == "room_changed" else str(value)
    if action == "pressure_commanded":
        source = value.get("source")
        return (f"{value.get('pressure_cmh2o')} cmH2O"
                + (f" (by {source})" if source and source != "monitor" else ""))
    if action == "pressure_cancelled":
        return (f"{value.get('pressure_cmh2o')} cmH2O pending" if "pressure_cmh2o" in value
                else str(value.get("reason")))
    if action == "pressure_applied":
        return (f"applied ({value.get('pressure_cmh2o')} cmH2O)" if value.get("applied")
                else "not applied")
    if action == "record_added":
        return (f"{value.get('cpap_pressure_cmh2o')} cmH2O · "
                f"{fmt_number(value.get('breath_rate_bpm'))} bpm · "
                f"{value.get('apnea_count')} apneas")
    if action == "patient_created":
        return f"MRN {value.get('mrn')} · {value.get('name') or 'no name'} · room {value.get('room')}"
    return ", ".join(f"{k}: {v}" for k, v in value.items())


SCREEN_NAMES = {STATION_SIDE: "Patient Station", MONITOR_SIDE: "Monitoring Station"}


def audit_who(who: dict) -> str:
    """``Dr Ada (monitor) · Monitoring Station``: the person or token, the role and,
    when the UI said so, the screen that acted."""
    role, via = who.get("role"), who.get("via")
    return (f"{who.get('name') or 'anonymous'}" + (f" ({role})" if role else "")
            + (f" · {SCREEN_NAMES.get(via, via)}" if via else ""))


def audit_frame(entries: list[dict]) -> pd.DataFrame:
    """Audit entries as a table (plain text cells: names are never rendered as markup)."""
    rows = []
    for entry in entries:
        action = str(entry.get("action"))
        rows.append({"When": fmt_time(entry.get("at")),
                     "Who": audit_who(entry.get("who") or {}),
                     "Action": AUDIT_ACTIONS.get(action, action),
                     "Old": _audit_value(action, entry.get("old")),
                     "New": _audit_value(action, entry.get("new")),
                     "From": entry.get("address") or "—"})
    return pd.DataFrame(rows, columns=["When", "Who", "Action", "Old", "New", "From"])


def render_audit(base: str, room: int) -> None:
    """The room's audit trail in an expander (fetched only while it is open)."""
    expander = st.expander("Audit trail — who changed what in this room",
                           key=f"mon_audit_{room}", on_change="rerun",
                           icon=":material/history:")
    if not expander.open:
        return
    with expander:
        try:
            entries = fetch_audit(base, room)
        except ApiError as exc:
            st.warning(f"The audit trail cannot be shown. {exc.message}")
            return
        if not entries:
            st.caption("No changes recorded for this room yet.")
            return
        st.dataframe(audit_frame(entries), hide_index=True, width="stretch")
        st.caption(f"Newest first; the last {AUDIT_LIMIT} changes. “Who” is the person "
                   "who signed in, or the access token's name, with the role and the "
                   "screen.")


def record_label(record: dict) -> str:
    apneas = record.get("apnea_count")
    return (f"{fmt_time(record.get('received_at'))} · {record.get('cpap_pressure_cmh2o')} "
            f"cmH2O · {fmt_number(record.get('breath_rate_bpm'))} bpm · "
            + (plural(int(apneas), "apnea") if apneas is not None else "— apneas"))


def render_record_image(base: str, record: dict, title: str, room: int, key: str) -> None:
    st.markdown(f"**{title}** — {fmt_time(record.get('received_at'))}")
    if not record.get("has_image"):
        st.caption("No flow image with this record.")
        return
    try:
        image = fetch_image(base, record["id"])
    except ApiError as exc:
        st.warning(f"The image cannot be loaded. {exc.message}")
        return
    st.image(image, width="stretch")
    moment = parse_time(record.get("received_at"))
    stamp = moment.astimezone().strftime("%Y%m%d-%H%M%S") if moment else record["id"]
    st.download_button("Download image", image, key=key, mime="image/png",
                       file_name=f"room{room}_mrn{record.get('mrn')}_{stamp}.png",
                       icon=":material/download:", on_click="ignore")


def trend_chart(records: list[dict]) -> alt.VConcatChart:
    """Over a patient's records: apneas (bars) and breath rate, and below the AHI with
    its alert line (AHI_ALERT_PER_H)."""
    import altair as alt

    frame = pd.DataFrame([{
        "time": parse_time(r.get("received_at")).astimezone().replace(tzinfo=None),
        "breath_rate_bpm": r.get("breath_rate_bpm"),
        "apnea_count": r.get("apnea_count"),
        "ahi": r.get("ahi"),
    } for r in records if parse_time(r.get("received_at"))])
    span_s = (frame["time"].max() - frame["time"].min()).total_seconds() if len(frame) else 0
    # the parts of fmt_time's format: the time alone within a day, else date and time
    time_format = "%H:%M:%S" if span_s < 24 * 3600 else "%Y-%m-%d %H:%M"
    time_tip = alt.Tooltip("time:T", title="Record time", format=TIME_FORMAT)
    # padding: the first and last bars are centred on the ends of the axis, so half of
    # each would be cut off without it
    base = alt.Chart(frame).encode(x=alt.X("time:T", title="Record time",
                                           scale=alt.Scale(padding=TREND_BAR_PX),
                                           axis=alt.Axis(format=time_format, labelAngle=0,
                                                         labelOverlap=True)))
    apneas = base.mark_bar(color="#d62728", opacity=0.45, size=TREND_BAR_PX).encode(
        y=alt.Y("apnea_count:Q", title="Apnea count", scale=alt.Scale(domainMin=0),
                axis=alt.Axis(titleColor="#d62728", format="d", tickMinStep=1)),
        tooltip=[time_tip, alt.Tooltip("apnea_count:Q", title="Apneas")])
    rate = base.mark_line(point=True, color="#1f77b4").encode(
        y=alt.Y("breath_rate_bpm:Q", title="Breath rate (bpm)",
                axis=alt.Axis(titleColor="#1f77b4")),
        tooltip=[time_tip, alt.Tooltip("breath_rate_bpm:Q", title="Breath rate", format=".1f")])
    ahi = base.mark_line(point=True, color="#7b1fa2").encode(
        y=alt.Y("ahi:Q", title="AHI (events/h)", scale=alt.Scale(domainMin=0),
                axis=alt.Axis(titleColor="#7b1fa2")),
        tooltip=[time_tip, alt.Tooltip("ahi:Q", title="AHI", format=".1f")])
    threshold = alt.Chart(pd.DataFrame({"ahi": [AHI_ALERT_PER_H]})).mark_rule(
        color="#7b1fa2", strokeDash=[4, 3], opacity=0.6).encode(y="ahi:Q")
    breathing = alt.layer(apneas, rate).resolve_scale(y="independent").properties(height=170)
    return alt.vconcat(breathing, alt.layer(ahi, threshold).properties(height=110))


def render_room_detail(base: str, entry: dict, server_time: str | None) -> None:
    room = entry["room"]
    patient = entry.get("patient") or {}
    mrn = patient.get("mrn")
    st.markdown(f"#### Room {room} — MRN {mrn if mrn is not None else '—'}")
    st.text(f"Patient: {patient.get('name') or 'no name'}")

    records: list[dict] = []
    if mrn is not None:
        try:
            records = fetch_patient(base, mrn).get("records") or []
        except ApiError as exc:
            st.warning(f"The history of MRN {mrn} cannot be loaded. {exc.message}")
    # Latest and the compare list come from one answer (the history, newest first): the
    # room list is cached apart and may be older or newer, and a list built from both
    # offered the record shown as latest, or lost the choice on the next refresh.
    latest = records[0] if records else entry.get("latest")

    pressure, source = pressure_in_force(entry)
    alerts = room_alerts(entry, server_time)
    cols = st.columns([1.1, 1.1, 1, 0.9, 0.8, 1.9])
    cols[0].metric("Pressure in force", f"{pressure} cmH2O" if pressure is not None else "—",
                   help=f"Pressure {source}.")
    if latest is None:
        cols[1].metric("Latest record", "No data yet")
    else:
        cols[1].metric("Record made at", f"{fmt_number(latest.get('cpap_pressure_cmh2o'))} cmH2O",
                       help="The pressure the latest record was made at.")
        cols[2].metric("Breath rate", f"{fmt_number(latest.get('breath_rate_bpm'))} bpm")
        cols[3].metric("Apnea count", apnea_markdown(latest.get("apnea_count")))
        cols[4].metric("AHI", ahi_markdown(latest.get("ahi")), help=ahi_help(latest))
        cols[5].metric("Data time", fmt_time(latest.get("received_at")))
        render_clinical_metrics(latest, st)
    if alerts:
        st.markdown(f":red-badge[:material/warning: needs attention: {' · '.join(alerts)}]")
    elif latest is not None:
        st.markdown(":green-badge[live]")

    if running_night(entry) or entry.get("live"):
        render_room_live(base, room, server_time)

    left, right = st.columns([2, 3], gap="large")
    with left:
        render_pressure_command(entry)
    with right:
        st.markdown("**Trend over this patient's records**")
        if records:
            st.altair_chart(trend_chart(records), width="stretch")
            render_night_report(room, mrn)
        else:
            st.caption("No records yet.")
    render_audit(base, room)

    if latest is None:
        if not entry.get("live"):
            st.info("No CPAP data from this room yet.")
        return
    earlier = [r for r in records if r.get("id") != latest.get("id")]
    labels = {r["id"]: record_label(r) for r in earlier}
    picker, _ = st.columns([2, 3], gap="large")
    chosen_id = picker.selectbox(
        "Compare with an earlier record", list(labels), index=None,
        key=f"mon_history_{room}_{mrn}", placeholder="Choose a date and time",
        format_func=labels.__getitem__)
    chosen = next((r for r in earlier if r["id"] == chosen_id), None)
    image_cols = st.columns(2, gap="large")
    with image_cols[0]:
        render_record_image(base, latest, "Latest", room, key=f"mon_dl_latest_{room}")
    with image_cols[1]:
        if chosen is None:
            st.caption("Choose an earlier record to show it beside the latest one."
                       if earlier else "No earlier records for this patient.")
        else:
            render_record_image(base, chosen, "Earlier", room, key=f"mon_dl_earlier_{room}")


@st.cache_data(ttl=ROOMS_TTL_S, show_spinner=False)
def fetch_live(base: str, room: int) -> tuple[dict, list[dict]]:
    """A room's running night and its titration rows (two requests)."""
    return (api_json("GET", f"/api/v1/rooms/{room}/live", base=base),
            api_json("GET", f"/api/v1/rooms/{room}/titration", base=base)["rows"])


def event_timeline(night: dict, rows: list[dict]):
    """The night's events (apneas red, hypopneas amber) over time with the pressure
    levels drawn as steps: where the events stop is the pressure that works."""
    import altair as alt

    events = pd.DataFrame(night.get("events") or [], columns=["type", "start_s", "end_s"])
    events["start_min"], events["end_min"] = events["start_s"] / 60.0, events["end_s"] / 60.0
    steps = pd.DataFrame([{"t_min": r["from_s"] / 60.0, "pressure_cmh2o": r["pressure_cmh2o"]}
                          for r in rows]
                         + ([{"t_min": rows[-1]["to_s"] / 60.0,
                              "pressure_cmh2o": rows[-1]["pressure_cmh2o"]}] if rows else []),
                         columns=["t_min", "pressure_cmh2o"])
    x = alt.X("t_min:Q", title="Recording time (min)")
    pressure = alt.Chart(steps).mark_line(interpolate="step-after", color="#444444").encode(
        x=x, y=alt.Y("pressure_cmh2o:Q", title="CPAP (cmH2O)", scale=alt.Scale(zero=False)),
        tooltip=[alt.Tooltip("pressure_cmh2o:Q", title="Pressure")])
    marks = alt.Chart(events).mark_rect(opacity=0.5).encode(
        x=alt.X("start_min:Q", title="Recording time (min)"), x2="end_min:Q",
        color=alt.Color("type:N", title="Event",
                        scale=alt.Scale(domain=list(EVENT_COLOURS),
                                        range=list(EVENT_COLOURS.values())),
                        legend=alt.Legend(orient="top")),
        tooltip=[alt.Tooltip("type:N"), alt.Tooltip("start_min:Q", format=".1f", title="From (min)")])
    return alt.layer(marks, pressure).properties(height=170)


TITRATION_COLUMNS = {"pressure_cmh2o": "Pressure (cmH2O)", "minutes": "Minutes",
                     "breaths": "Breaths", "breath_rate_bpm": "Breath rate (bpm)",
                     "apneas": "Apneas", "hypopneas": "Hypopneas", "ahi": "AHI (/h)",
                     "tidal_volume_l": "Tidal volume (L)", "leak_rate_lpm": "Leak (L/min)"}


def titration_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame([{**{label: r.get(key) for key, label in TITRATION_COLUMNS.items()},
                           "From": fmt_time(r.get("from_at")), "To": fmt_time(r.get("to_at"))}
                          for r in rows],
                         columns=["From", "To", *TITRATION_COLUMNS.values()])
    return frame.round({"Minutes": 1, "Breath rate (bpm)": 1, "AHI (/h)": 1,
                        "Tidal volume (L)": 2, "Leak (L/min)": 1})


def render_room_live(base: str, room: int, server_time: str | None) -> None:
    """The room's live night: metrics, the last minute of flow, the events with the
    pressure steps, and the titration table."""
    try:
        night, rows = fetch_live(base, room)
    except ApiError as exc:
        if exc.status != 404:
            st.warning(f"The live night of room {room} cannot be loaded. {exc.message}")
        return
    state = "ended" if night.get("ended") else (
        "stale" if live_stale(night, server_time) else "live")
    st.markdown(f"**Live night** · :{'green' if state == 'live' else 'gray'}-badge[{state}] · "
                f"started {fmt_time(night.get('started_at'))} · last samples "
                f"{age_text(night.get('last_chunk_at'), server_time)} ago")
    render_live_metrics(night, st)
    left, right = st.columns([2, 3], gap="large")
    with left:
        st.markdown("**Flow, last minute**")
        trace = pd.DataFrame(night.get("trace") or [], columns=["time_s", "flow_lpm"])
        if len(trace):
            st.line_chart(trace, x="time_s", y="flow_lpm", height=170,
                          x_label="time (s)", y_label="flow (L/min)")
        else:
            st.caption("No samples yet.")
    with right:
        st.markdown("**Events and pressure over the night**")
        st.altair_chart(event_timeline(night, rows), width="stretch")
    st.markdown("**Titration: one row per pressure**")
    st.dataframe(titration_frame(rows), hide_index=True, width="stretch", placeholder="—")


@safe_callback
def prepare_night_report(room: int, mrn: int) -> None:
    """Fetch the patient's night report (PDF and PNG) from the API for download."""
    report = {"room": room, "mrn": mrn}
    try:
        for fmt in REPORT_MIMES:
            report[fmt] = api_call("GET", f"/api/v1/patients/{mrn}/report.{fmt}").content
    except ApiError as exc:
        report = {"room": room, "mrn": mrn, "error": exc.message}
    st.session_state.mon_report = report


def render_night_report(room: int, mrn: int) -> None:
    """*Night report*: the patient's records of the night on one page (from the API)."""
    ss = st.session_state
    prepared = ss.mon_report if (ss.mon_report or {}).get("room") == room \
        and ss.mon_report.get("mrn") == mrn else None
    cols = st.columns([1.3, 1, 1], vertical_alignment="center")
    cols[0].button("Night report", key=f"mon_report_{room}", icon=":material/summarize:",
                   on_click=prepare_night_report, args=(room, mrn), width="stretch",
                   help="The records of this patient's night (the 12 hours before the newest) "
                        "on one page.")
    if prepared and "error" in prepared:
        st.warning(f"The night report cannot be made. {prepared['error']}")
    elif prepared:
        for col, fmt in zip(cols[1:], REPORT_MIMES):
            col.download_button(fmt.upper(), prepared[fmt], key=f"mon_report_{fmt}_{room}",
                                file_name=f"room{room}_mrn{mrn}_night-report.{fmt}",
                                mime=REPORT_MIMES[fmt], icon=":material/download:",
                                on_click="ignore", width="stretch")


def refresh_header(label: str, key: str, on_click):
    """A header row with a refresh button on the right; returns the wide left column."""
    head = st.columns([4, 1], vertical_alignment="center")
    head[1].button(label, key=key, icon=":material/refresh:", on_click=on_click, width="stretch")
    return head[0]


def render_monitor_live() -> None:
    base = api_url()
    title = refresh_header("Refresh now", "mon_refresh", refresh_monitor)
    try:
        body = fetch_rooms(base)
    except ApiError as exc:
        st.error(exc.message)
        return
    server_time = body.get("server_time")
    rooms = order_rooms(body.get("rooms") or [], server_time,
                        st.session_state.get("mon_order") == ORDER_CHOICES[1])
    shown = filter_rooms(rooms, server_time, st.session_state.get("mon_filter",
                                                                  FILTER_CHOICES[0]))
    title.caption(f"{plural(len(rooms), 'room')}"
                  + (f" · {len(shown)} shown" if len(shown) != len(rooms) else "")
                  + f" · updated {fmt_time(server_time)} · "
                  + (f"auto-refresh every {interval_s:g} s" if (interval_s := REFRESH_CHOICES_S
                     .get(st.session_state.get("mon_interval"))) else "auto-refresh paused"))
    if not rooms:
        st.info("No rooms yet: a patient station appears here after its first upload.")
        return
    if not shown:
        st.info(f"No room matches “{st.session_state.mon_filter}”.")
    elif wall_mode(len(rooms)) == WALL_MODES[1]:
        render_tile_wall(shown, server_time, legend=title)
    else:
        render_card_wall(shown, server_time)

    by_room = {entry["room"]: entry for entry in rooms}
    if st.session_state.get("mon_room") not in by_room:
        # a few rooms: the first one's detail at once; a lab's wall: the one clicked
        compact = wall_mode(len(rooms)) == WALL_MODES[1]
        st.session_state.mon_room = None if compact else rooms[0]["room"]

    def room_label(room: int) -> str:
        patient = by_room[room].get("patient")
        if not patient:
            return f"Room {room} — free"
        return f"Room {room} — MRN {patient.get('mrn', '—')} {patient.get('name') or ''}"

    st.divider()
    st.selectbox("Room", list(by_room), key="mon_room", format_func=room_label,
                 placeholder="Click a room's tile, or choose it here")
    if st.session_state.mon_room is None:
        return
    with st.container(key=f"mon_detail_{st.session_state.mon_room}"):
        render_room_detail(base, by_room[st.session_state.mon_room], server_time)


def render_monitoring_station() -> None:
    head = st.columns([4, 1], vertical_alignment="bottom")
    head[0].subheader("Monitoring Station")
    # the settings fold away: on the lab's big screen the rows of rooms need the height
    settings = head[1].popover("Wall settings", icon=":material/tune:", width="stretch")
    settings.selectbox("Auto-refresh", list(REFRESH_CHOICES_S), key="mon_interval")
    settings.radio("Order", ORDER_CHOICES, key="mon_order", horizontal=True)
    settings.radio("Wall", WALL_MODES, key="mon_wall", horizontal=True,
                   help=f"Auto: compact tiles from {COMPACT_FROM_ROOMS} rooms on.")
    settings.selectbox("Show", FILTER_CHOICES, key="mon_filter")
    interval_s = REFRESH_CHOICES_S[st.session_state.mon_interval]
    settings.caption(
        (f"Refreshes every {interval_s} s" if interval_s else "Auto-refresh paused")
        + f". Rooms without data for {STALE_AFTER_MIN:g} min are marked stale.")
    @st.fragment(run_every=interval_s)
    def monitor_live():
        guarded(render_monitor_live)     # a fragment's own error must not escape

    monitor_live()


# --- Patients -------------------------------------------------------------------------

def highlight_alert_rows(frame: pd.DataFrame, column: str = "Apnea count",
                         ahi_column: str = "AHI (/h)"):
    """Styler that shades every row whose apnea count is APNEA_ALERT_COUNT or more, or
    whose AHI is AHI_ALERT_PER_H or more."""
    frame = frame.copy()
    formats = {}
    for name in frame.columns:       # None -> NaN so missing numbers show as a dash
        if name in WHOLE_COLUMNS or name in DECIMAL_COLUMNS:
            frame[name] = pd.to_numeric(frame[name], errors="coerce")
            formats[name] = "{:.0f}" if name in WHOLE_COLUMNS else "{:.1f}"

    def row_style(row):
        alert = (pd.notna(row[column]) and row[column] >= APNEA_ALERT_COUNT) or (
            ahi_column in row and pd.notna(row[ahi_column]) and row[ahi_column] >= AHI_ALERT_PER_H)
        return [HIGHLIGHT_CSS if alert else ""] * len(row)
    return frame.style.apply(row_style, axis=1).format(formats, na_rep="—")


PATIENT_COLUMNS = ("Room", "MRN", "Name", "Records", "Pressure (cmH2O)", "Breath rate (bpm)",
                   "Apnea count", "AHI (/h)", "Latest data")


def patients_rows(patients: list[dict]) -> list[dict]:
    """One row per patient (the Patients table and its CSV), plain Python values."""
    rows = []
    for patient in patients:
        latest = patient.get("latest") or {}
        rows.append({
            "Room": patient.get("room"), "MRN": patient.get("mrn"),
            "Name": patient.get("name") or "",
            "Records": patient.get("record_count", 0),
            "Pressure (cmH2O)": latest.get("cpap_pressure_cmh2o"),
            "Breath rate (bpm)": latest.get("breath_rate_bpm"),
            "Apnea count": latest.get("apnea_count"),
            "AHI (/h)": latest.get("ahi"),
            "Latest data": fmt_time(latest.get("received_at")) if latest else "—",
        })
    return rows


def patients_frame(patients: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(patients_rows(patients), columns=list(PATIENT_COLUMNS))


def patients_csv(patients: list[dict]) -> bytes:
    """The Patients table as CSV: numbers as on screen, no cell a spreadsheet would run."""
    return csv_text(patients_rows(patients), PATIENT_COLUMNS,
                    {name: 1 for name in DECIMAL_COLUMNS}).encode("utf-8")


def records_frame(records: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{
        "Time": fmt_time(r.get("received_at")),
        "Room": r.get("room"),
        "Pressure (cmH2O)": r.get("cpap_pressure_cmh2o"),
        "Breath rate (bpm)": r.get("breath_rate_bpm"),
        "Apnea count": r.get("apnea_count"),
        "Hypopneas": r.get("hypopnea_count"),
        "AHI (/h)": r.get("ahi"),
        "Breaths": r.get("breaths"),
        "Duration (s)": r.get("duration_s"),
    } for r in records], columns=["Time", "Room", "Pressure (cmH2O)", "Breath rate (bpm)",
                                  "Apnea count", "Hypopneas", "AHI (/h)", "Breaths",
                                  "Duration (s)"])


def render_patients() -> None:
    base = api_url()
    refresh_header("Refresh", "pt_refresh", refresh_patients).subheader("Patients")
    try:
        patients = fetch_patients(base)
    except ApiError as exc:
        st.error(exc.message)
        return
    if not patients:
        st.info("No patients yet.")
        return
    frame = patients_frame(patients)
    st.dataframe(highlight_alert_rows(frame), hide_index=True, width="stretch", placeholder="—")
    st.download_button("Download CSV", patients_csv(patients),
                       file_name="patients.csv", mime="text/csv", key="pt_csv",
                       icon=":material/download:", on_click="ignore")
    st.caption(f"Rows with {APNEA_ALERT_COUNT} or more apnea events or an AHI of "
               f"{AHI_ALERT_PER_H:g}/h or more are highlighted. "
               "Choose a patient for the history.")
    # one picker, not an expander per patient: a lab's hundreds of patients made the
    # first page load draw hundreds of elements
    labels = {p.get("mrn"): (f"Room {p.get('room')} · MRN {p.get('mrn')} · "
                             f"{p.get('name') or 'no name'} "
                             f"({plural(p.get('record_count', 0), 'record')})")
              for p in patients}
    mrn = st.selectbox("Patient history", list(labels), index=None, key="pt_history",
                       placeholder="Choose a patient", format_func=labels.get)
    if mrn is not None:
        with st.container(border=True, key="pt_history_panel"):
            try:
                records = fetch_patient(base, mrn).get("records") or []
            except ApiError as exc:
                st.warning(exc.message)
                return
            if not records:
                st.caption("No CPAP records yet.")
                return
            st.dataframe(highlight_alert_rows(records_frame(records)), hide_index=True,
                         width="stretch", placeholder="—")
            try:
                csv = api_call("GET", f"/api/v1/patients/{mrn}/records.csv", base=base).content
            except ApiError as exc:
                st.caption(f"History CSV unavailable. {exc.message}")
            else:
                st.download_button("Download history CSV", csv, key=f"pt_csv_{mrn}",
                                   file_name=f"mrn{mrn}_records.csv", mime="text/csv",
                                   icon=":material/download:", on_click="ignore")


# --- Page -----------------------------------------------------------------------------

def guarded(render) -> None:
    """Run one tab; an unexpected error becomes a message, never a traceback."""
    try:
        render()
    except Exception as exc:  # noqa: BLE001
        log.exception("%s failed", render.__name__)
        st.error(f"This part of the page hit an unexpected problem ({type(exc).__name__}). "
                 "Your entries are kept; reload the page or try again.")


# --- Who is using the screen ---------------------------------------------------------

TABS = {"Patient Station": render_patient_station,
        "Monitoring Station": render_monitoring_station, "Patients": render_patients}
#: The tabs a signed-in person sees. Ward-wide data (cached for every session of this
#: process) is therefore only fetched for monitors and admins, who may all read it.
TABS_FOR_ROLE = {"station": ("Patient Station",),
                 "monitor": ("Monitoring Station", "Patients"),
                 "admin": tuple(TABS)}
SINGLE_USER_BANNER = (
    "**Single-user mode (loopback only): no sign-in.** Bedside actions are recorded as "
    "the station, monitor actions as the monitor. For several people, or to open the UI "
    f"to the network, start it with {md_escape(SIGN_IN_ENV)}=1 and add people "
    "(python -m sleeplab.api.accounts add).")


@safe_callback
def do_sign_in() -> None:
    ss = st.session_state
    username, password = ss.get("signin_user", ""), ss.get("signin_password", "")
    ss.signin_password = ""                  # never kept in the page's state
    if not username.strip() or not password:
        ss.signin_error = "Enter your user name and password."
        return
    try:
        session = api_json("POST", "/api/v1/sessions", side=None,
                           json={"username": username, "password": password})
    except ApiError as exc:
        ss.signin_error = {
            401: "Unknown user name or wrong password.",
            429: "Too many failed sign-ins for this user name or this computer. Wait a few "
                 "minutes, then try again, or ask your administrator.",
        }.get(exc.status, f"Not signed in. {exc.message}")
        return
    ss.signin = {k: session.get(k) for k in ("token", "name", "role", "username",
                                             "expires_at")}
    ss.pop("signin_notice", None)


@safe_callback
def do_sign_out() -> None:
    try:
        api_call("DELETE", "/api/v1/sessions/current")
    except ApiError:
        pass                     # expired or unreachable: the token is dropped anyway
    st.session_state.pop("signin", None)
    st.session_state.signin_notice = "You have signed out."


def render_sign_in() -> None:
    ss = st.session_state
    st.subheader("Sign in")
    if ss.get("signin_notice"):
        st.info(ss.signin_notice)
    with st.form("signin_form"):
        st.text_input("User name", key="signin_user", autocomplete="username")
        st.text_input("Password", key="signin_password", type="password",
                      autocomplete="current-password")
        st.form_submit_button("Sign in", key="signin_submit", type="primary",
                              on_click=do_sign_in)
    if ss.get("signin_error"):
        st.error(ss.pop("signin_error"))


#: Entries typed into the tabs. Streamlit drops the value of a widget that is not drawn
#: in a run unless it is set again, so they are re-set while the sign-in form is shown.
ENTRY_KEYS = ("ps_name", "ps_mrn", "ps_room", "ps_pressure", "ps_source", "ps_sample",
              "mon_room", "mon_interval", "mon_order")


def keep_entries() -> None:
    ss = st.session_state
    for key in list(ss.keys()):
        if key in ENTRY_KEYS or str(key).startswith("mon_pressure_"):
            ss[key] = ss[key]


def signed_in() -> dict | None:
    """The person signed in on this page, or None (an expired sign-in is dropped)."""
    ss = st.session_state
    person = ss.get("signin")
    if person:
        expires = parse_time(person.get("expires_at"))
        if expires is None or expires <= datetime.now(timezone.utc):
            ss.pop("signin", None)
            ss.signin_notice = "Your sign-in has expired. Sign in again; your entries are kept."
            return None
    return person


def loopback_only() -> bool:
    """Whether Streamlit listens on a loopback address only (unset: every interface)."""
    return is_loopback(st.get_option("server.address") or "")


def access_tabs() -> tuple[str, ...]:
    """Render who is using the screen; the tabs they may use (none: sign in first)."""
    if sign_in_required():
        person = signed_in()
        if person is None:
            keep_entries()
            render_sign_in()
            return ()
        who, out = st.columns([5, 1], vertical_alignment="center")
        who.markdown(f"Signed in as **{md_escape(person.get('name'))}** "
                     f"({md_escape(person.get('role'))}) until "
                     f"{fmt_time(person.get('expires_at'))}")
        out.button("Sign out", key="signout", on_click=do_sign_out, width="stretch")
        return TABS_FOR_ROLE.get(person.get("role"), ())
    if single_user_mode():
        if not loopback_only():
            st.error("This page holds the station and monitor tokens of single-user mode, "
                     "but it is served beyond this computer (server.address is not "
                     f"127.0.0.1). Start it on 127.0.0.1, or with {md_escape(SIGN_IN_ENV)}=1 "
                     "so that people sign in.")
            return ()
        st.info(SINGLE_USER_BANNER, icon=":material/person:")
    return tuple(TABS)


def main() -> None:
    st.set_page_config(page_title="Sleep Lab Monitor", page_icon=":material/bedtime:",
                       layout="wide")
    init_session_state()
    st.title("Sleep Lab Monitor")
    st.caption(f"Server: {api_url()}")
    if st.session_state.get("ui_error"):
        st.error(st.session_state.pop("ui_error"))
    names = access_tabs()
    if not names:
        return
    for tab, name in zip(st.tabs(list(names)), names):
        with tab:
            guarded(TABS[name])


if __name__ == "__main__":
    main()
