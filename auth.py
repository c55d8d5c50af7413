"""Access control hook (the one place where authentication will be enforced).

Each view declares the roles that may call it with :func:`roles`; the app calls
:func:`authorize` before every request. Today no tokens are configured, so every
caller is allowed; token checking by role (station / monitor / admin, 401/403 in
the JSON error shape) plugs in here without touching the routes.
"""
from __future__ import annotations

from dataclasses import dataclass

from flask import current_app, g, request

STATION, MONITOR, ADMIN = "station", "monitor", "admin"
ANYONE = (STATION, MONITOR, ADMIN)


@dataclass(frozen=True)
class Caller:
    """Who is calling; ``name`` is what the audit trail will record."""
    name: str
    role: str | None
    address: str | None


def roles(*allowed: str):
    """Declare which roles may call a view (``@roles(MONITOR, ADMIN)``)."""
    def decorate(view):
        view.allowed_roles = allowed or ANYONE
        return view
    return decorate


def authorize() -> None:
    """``before_request`` hook: identify the caller and check the view's roles.

    Without configured tokens everyone is anonymous and allowed.
    """
    view = current_app.view_functions.get(request.endpoint or "")
    g.allowed_roles = getattr(view, "allowed_roles", ANYONE)
    g.caller = Caller(name="anonymous", role=None, address=request.remote_addr)


def current_caller() -> Caller:
    return g.get("caller") or Caller(name="anonymous", role=None, address=None)
