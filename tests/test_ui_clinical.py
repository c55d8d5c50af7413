"""Issue #13 in the UI (AppTest against the real API over HTTP): the bedside shows AHI,
hypopneas, tidal volume, minute ventilation and leak rate of a recording with known truth,
shades apneas and hypopneas apart, and stores them; the monitor shows each room's AHI,
red from AHI_ALERT_PER_H."""
from __future__ import annotations

import json

import pytest
import requests

import patient_streamlit as ui
from tests.test_ui_apptest import (api, at, card_states, click, enter_patient,  # noqa: F401
                                   load_file, metric_values, monitor, run, station)
from tools import cpap_synth

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def night():
    """400 s with two hypopneas and one apnea, a set leak of 4 L/min (known truth)."""
    return cpap_synth.generate(duration_s=400, rate_bpm=15, amplitude_lpm=40, leak_lpm=4.0,
                               apnea_gaps_s=(20.0,), hypopnea_durations_s=(20.0, 30.0), seed=11)


def number(text: str) -> float:
    """The number of a metric's value (``7.2 L/min``, ``:red[27.0]``)."""
    return float(text.removeprefix(":red[").split()[0].rstrip("]"))


def test_bedside_shows_and_stores_the_clinical_metrics(at, api, night):
    content, truth = night
    enter_patient(at, name="Ada", mrn="12", room="3", pressure="10")
    load_file(at, content)
    run(at)
    metrics = {m.label: m.value for m in station(at).metric}
    hours = truth["duration"] / 3600
    assert metrics["Hypopneas"] == "2"
    assert number(metrics["AHI"]) == pytest.approx(3 / hours, abs=0.05)
    assert metrics["AHI"].startswith(":red[")               # 27/h: from 15 red
    assert number(metrics["Tidal volume"]) == pytest.approx(truth["tidal_volume_l"], rel=0.05)
    assert number(metrics["Minute ventilation"]) == pytest.approx(
        truth["minute_ventilation_lpm"], rel=0.05)
    assert number(metrics["Leak rate"]) == pytest.approx(4.0, abs=0.5)

    (chart,) = [c for c in station(at).get("vega_lite_chart") if "flow_lpm" in c.proto.spec]
    shading = json.loads(chart.proto.spec)["layer"][0]
    colour = shading["encoding"]["color"]
    assert colour["scale"] == {"domain": ["apnea", "hypopnea"],
                               "range": [ui.EVENT_COLOURS["apnea"], ui.EVENT_COLOURS["hypopnea"]]}
    assert "legend" in colour and colour["legend"] is not None

    click(at, "ps_upload")
    (record,) = requests.get(f"{api}/api/v1/patients/12", timeout=5).json()["records"]
    assert record["hypopnea_count"] == 2 and record["apnea_count"] == 1
    assert record["ahi"] == pytest.approx(3 / hours, rel=0.01)
    detail = requests.get(f"{api}/api/v1/records/{record['id']}", timeout=5).json()
    assert sorted(e["type"] for e in detail["events"]) == ["apnea", "hypopnea", "hypopnea"]


def upload(api, mrn, room, ahi, apneas=0):
    requests.post(f"{api}/api/v1/patients", timeout=5, json={
        "mrn": mrn, "room": room, "name": f"P{mrn}", "cpap_pressure_cmh2o": 10,
        "breath_rate_bpm": 14.0, "apnea_count": apneas, "ahi": ahi, "hypopnea_count": 3,
    }).raise_for_status()


def test_monitor_cards_show_the_ahi_red_from_the_threshold(at, api):
    upload(api, 12, 3, ahi=ui.AHI_ALERT_PER_H + 5)      # no apneas: the AHI alone alerts
    upload(api, 40, 7, ahi=4.0)
    click(at, "mon_refresh")
    # the two cards, then the detail of the room opened first (room 3)
    assert metric_values(monitor(at), "AHI") == [":red[20.0]", "4.0", ":red[20.0]"]
    assert card_states(at) == {3: "attention", 7: "ok"}
    assert any("AHI 20/h" in m for m in [e.value for e in monitor(at).markdown])


def test_bedside_offers_the_night_report_of_its_recording(at, night):
    import hashlib
    import io

    import pypdf

    content, truth = night
    load_file(at, content)
    run(at)
    keys = {b.key for b in at.get("download_button")}
    assert {"ps_report_pdf", "ps_report_png"} <= keys
    analysis = ui.analyse_recording(hashlib.sha256(content).hexdigest(), content)
    pdf = ui.bedside_report(analysis, "pdf", 10, "Night report — night.txt")
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    assert len(reader.pages) == 1
    text = reader.pages[0].extract_text()
    assert "Night report — night.txt" in text and "hypopneas" in text
    assert ui.bedside_report(analysis, "png", 10, "x").startswith(b"\x89PNG\r\n\x1a\n")


def test_monitor_prepares_the_patients_night_report(at, api, night):
    import io

    requests.post(f"{api}/api/v1/rooms/3/recordings", timeout=30,
                  data={"mrn": "12", "cpap_pressure_cmh2o": "9"},
                  files={"file": ("night.txt", io.BytesIO(night[0]))}).raise_for_status()
    click(at, "mon_refresh")
    click(at, "mon_report_3")
    prepared = at.session_state["mon_report"]
    assert prepared["room"] == 3 and prepared["mrn"] == 12
    assert prepared["pdf"].startswith(b"%PDF-") and prepared["png"].startswith(b"\x89PNG")
    assert {"mon_report_pdf_3", "mon_report_png_3"} <= {b.key for b in at.get("download_button")}
