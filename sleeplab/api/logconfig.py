"""Keep secrets out of gunicorn's access log.

The API refuses tokens in query strings (they must come in the ``Authorization``
header), but gunicorn's access log writes the whole request line, so a script that
sends ``?token=...`` would still leave its token in the log. :class:`RedactingLogger`
is gunicorn's logger with every access-log value passed through :func:`redact`:
credential-like query parameters (``token``, ``access_token``, ``api_key``,
``password``, ...) keep their name and lose their value, and the ``Authorization`` and
``Cookie`` headers are never written even if a custom format asks for them.

Use it with ``logger_class = "sleeplab.api.logconfig.RedactingLogger"`` in a gunicorn config file
or ``--logger-class sleeplab.api.logconfig.RedactingLogger`` on the command line.
"""
from __future__ import annotations

import re

from gunicorn import glogging

REDACTED = "[REDACTED]"

#: A query parameter whose value is a credential: its name (kept) and its value (replaced).
#: Matches at the start of a query string or after ``?``, ``&`` or ``;`` only, so
#: ``limit=5`` or ``monkey=1`` are left alone.
SECRET_PARAMETER = re.compile(
    r"(?<![^?&;\s\"])"
    r"((?:access_|id_|refresh_|auth_|api_)?token|api[_-]?key|key|auth|authorization"
    r"|password|passwd|secret|signature)"
    r"=[^&;\s\"#]*",
    re.IGNORECASE)

#: Access-log atoms (gunicorn's ``{header}i`` / ``{variable}e`` names) never written.
SECRET_ATOMS = ("{authorization}i", "{http_authorization}e", "{cookie}i", "{http_cookie}e",
                "{proxy-authorization}i", "{http_proxy_authorization}e")


def redact(text: str) -> str:
    """``text`` with the value of every credential-like query parameter replaced."""
    return SECRET_PARAMETER.sub(rf"\1={REDACTED}", text)


class RedactingLogger(glogging.Logger):
    """gunicorn's logger; the access log gets request lines, query strings, referers
    and environment values with credentials removed (see :func:`redact`)."""

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        for name in SECRET_ATOMS:
            if name in atoms:
                atoms[name] = REDACTED
        return {name: redact(value) if isinstance(value, str) else value
                for name, value in atoms.items()}
