"""The UI's settings that the launcher (``tools/launcher.py``) hands over in the environment.

Production code (the Streamlit UI) and the launcher share these names and rules, so
they live here rather than in the launcher: nothing in production imports ``tools``.
"""
from __future__ import annotations

import ipaddress

#: The one token of a UI configured by hand (e.g. in a container).
UI_TOKEN_ENV = "SLEEPLAB_API_TOKEN"
#: Single-user mode: the UI acts with ``station`` at the bedside and ``monitor`` at the
#: monitoring station.
STATION_TOKEN_ENV, MONITOR_TOKEN_ENV = "SLEEPLAB_STATION_TOKEN", "SLEEPLAB_MONITOR_TOKEN"
#: Tokens only the UI gets (never the API's environment).
UI_TOKEN_ENVS = (UI_TOKEN_ENV, STATION_TOKEN_ENV, MONITOR_TOKEN_ENV)
SIGN_IN_ENV = "SLEEPLAB_SIGN_IN"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a listening address) is reachable from this computer only."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:           # a host name, or empty (= every interface)
        return False


def sign_in_wanted(env) -> bool:
    """``SLEEPLAB_SIGN_IN`` is on: people sign in to the UI (launcher and UI)."""
    return (env.get(SIGN_IN_ENV) or "").strip().lower() in ("1", "true", "yes", "on")
