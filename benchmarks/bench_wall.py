"""The monitoring wall at lab scale, measured in a real browser.

    python benchmarks/bench_wall.py [--rooms 100,200,500] [--refreshes 5] [--shots DIR]

Starts its own nx-27017, the API (gunicorn.conf.py, open mode) and ``streamlit run
patient_streamlit.py`` on loopback ports, then for each room count N (cumulative: the
rooms of the previous count stay) seeds rooms 1..N through ``POST /api/v1/patients`` (one
patient and one record each, a few with apneas or a pending command) and, in Debian's
Chromium driven by Playwright at 1920×1080:

- first load: a new page, from ``goto`` until the app is idle (every tab drawn once);
- wall shown: from the click on the Monitoring Station tab until the last room's tile is
  on screen;
- tiles visible: how many tiles lie wholly inside the 1920×1080 viewport without scrolling;
- refresh: a new record for room 1 with a breath rate not seen before is posted, then
  "Refresh now" is clicked; the time from the click until room 1's tile shows the new
  rate (median and max over ``--refreshes``).

Prints one markdown table. ``--shots DIR`` saves ``wall-<N>.png`` of each count.
Absolute times on a shared 2-core machine are noisy: run it on a quiet machine and read
them beside the issue's targets (first load ≤ 3 s, refresh ≤ 0.5 s at 100 rooms).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from tools.api_process import ApiServer
from tools.local_mongo import LocalMongo, free_port
from tools.processes import stop_process, wait_http

ROOT = Path(__file__).resolve().parents[1]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1920, "height": 1080}
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
TILE = ".slw-tile"
VISIBLE_TILES_JS = """() => [...document.querySelectorAll('%s')].filter(e => {
    const r = e.getBoundingClientRect();
    return r.width > 0 && r.top >= 0 && r.left >= 0 && r.bottom <= innerHeight
        && r.right <= innerWidth; }).length""" % TILE


def seed(api: str, rooms: range) -> None:
    """One patient and one record per room; every 7th with apneas, every 11th a command."""
    def one(room: int) -> None:
        body = {"mrn": 50_000 + room, "room": room, "name": f"Patient {room}",
                "cpap_pressure_cmh2o": 8 + room % 10, "breath_rate_bpm": 12 + room % 9,
                "apnea_count": 3 if room % 7 == 0 else 0}
        requests.post(f"{api}/api/v1/patients", json=body, timeout=30).raise_for_status()
        if room % 11 == 0:
            requests.put(f"{api}/api/v1/rooms/{room}/pressure", timeout=30,
                         json={"pressure_cmh2o": 12, "mrn": 50_000 + room}).raise_for_status()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, rooms))


def measure(page, api: str, ui: str, rooms: int, refreshes: int, shots: Path | None) -> dict:
    start = time.perf_counter()
    page.goto(ui)
    page.wait_for_selector(IDLE, timeout=120_000)
    first_load_s = time.perf_counter() - start
    start = time.perf_counter()
    page.get_by_role("tab", name="Monitoring Station").click()
    page.locator(f'{TILE}[data-room="{rooms}"]').wait_for(timeout=120_000)
    wall_s = time.perf_counter() - start
    page.wait_for_selector(IDLE, timeout=120_000)
    visible = page.evaluate(VISIBLE_TILES_JS)
    if shots:
        page.screenshot(path=str(shots / f"wall-{rooms}.png"))

    refresh_s = []
    for i in range(refreshes):
        rate = round(40.0 + rooms / 1000 + i / 10, 1)        # a rate not on screen yet
        requests.post(f"{api}/api/v1/patients", timeout=30, json={
            "mrn": 50_001, "room": 1, "cpap_pressure_cmh2o": 9, "breath_rate_bpm": rate,
            "apnea_count": 0}).raise_for_status()
        page.wait_for_selector(IDLE, timeout=120_000)
        start = time.perf_counter()
        page.get_by_role("button", name="Refresh now").click()
        page.locator(f'{TILE}[data-room="1"]').get_by_text(re.compile(
            rf"^{rate:g}(/min| bpm)")).wait_for(timeout=120_000)
        refresh_s.append(time.perf_counter() - start)
    return {"rooms": rooms, "first_load_s": first_load_s, "wall_s": wall_s,
            "visible": visible, "refresh_p50_s": statistics.median(refresh_s),
            "refresh_max_s": max(refresh_s)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", default="100,200,500")
    parser.add_argument("--refreshes", type=int, default=5)
    parser.add_argument("--shots", type=Path)
    args = parser.parse_args()
    counts = sorted(int(n) for n in args.rooms.split(","))
    if args.shots:
        args.shots.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    rows = []
    with tempfile.TemporaryDirectory() as tmp, \
            LocalMongo(data_dir=Path(tmp) / "db", port=free_port()) as database, \
            ApiServer(database.uri()) as server:
        ui_port = free_port()
        env = dict(os.environ, API_URL=server.url, MONITOR_REFRESH_S="30")
        with (Path(tmp) / "ui.log").open("wb") as log:
            ui = subprocess.Popen(
                [sys.executable, "-m", "streamlit", "run", "patient_streamlit.py",
                 "--server.address", "127.0.0.1", "--server.port", str(ui_port),
                 "--server.headless", "true", "--browser.gatherUsageStats", "false"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        try:
            ui_url = f"http://127.0.0.1:{ui_port}"
            wait_http(f"{ui_url}/_stcore/health", ui, "Streamlit", 60)
            seeded = 0
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    for count in counts:
                        seed(server.url, range(seeded + 1, count + 1))
                        seeded = count
                        page = browser.new_page(viewport=VIEWPORT)
                        rows.append(measure(page, server.url, ui_url, count,
                                            args.refreshes, args.shots))
                        page.close()
                        print(rows[-1], flush=True)
                finally:
                    browser.close()
        finally:
            stop_process(ui)
    print("\n| rooms | first load (s) | wall shown (s) | tiles visible at 1920×1080 | "
          "refresh p50 (s) | refresh max (s) |\n|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['rooms']} | {r['first_load_s']:.2f} | {r['wall_s']:.2f} | "
              f"{r['visible']} of {r['rooms']} | {r['refresh_p50_s']:.2f} | "
              f"{r['refresh_max_s']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
