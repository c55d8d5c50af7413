"""Access control: bearer tokens with roles, checked before every request.

Configuration (environment, or the same keys in ``create_app(test_config)``):

- ``API_TOKEN``: one admin token (name ``admin``).
- ``API_TOKENS_FILE``: a file of named tokens with roles (JSON or text; see
  :func:`parse_tokens` and docs/README-security.md).
- ``API_PROTECT_READS``: reads need a token too (the default); ``0`` opens them.
- ``API_TRUST_PROXY=1``: take the caller's address from ``X-Forwarded-For``.
- ``API_REQUIRE_AUTH=1``: access control on even without static tokens (only people
  who sign in, :mod:`accounts`).
- ``API_SESSION_HOURS``: how long a sign-in session lasts (default 12, one shift).
- ``API_TRUSTED_HOSTS``: the host names the API answers to (comma-separated; default
  ``localhost``, ``127.0.0.1``, ``::1`` and ``API_HOST``; ``*`` turns the check off).
  Another ``Host`` header is a 400, whether auth is on or not: a DNS-rebinding page
  reaches the API under its own name.

With neither ``API_TOKEN`` nor ``API_TOKENS_FILE`` (nor ``API_REQUIRE_AUTH``) the API
is open (development and tests) and says so in a start-up warning.

Besides the static tokens, a bearer token may be a person's sign-in session
(``POST /api/v1/sessions``, see :mod:`accounts`): only its SHA-256 is stored, in the
``sessions`` collection, with the person's name and role and an expiry. The caller is
then the person (the audit trail names them).

Each view declares its access with one decorator: :func:`public` (never needs a
token), :func:`reads` (open unless reads are protected) or :func:`writes` (always
needs a token when auth is on). A view with none of them needs an admin token.

Only the SHA-256 digest of each token is kept in memory; a presented token is hashed
and compared with ``hmac.compare_digest`` against *every* known digest (no early
exit), so neither the position nor a prefix of a match shows in the timing. Tokens
and the ``Authorization`` header are never logged nor echoed in an error.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from flask import current_app, g, request
from werkzeug.exceptions import BadRequest, Forbidden, Unauthorized

from sleeplab import storage
import validation

STATION, MONITOR, ADMIN = "station", "monitor", "admin"
ANYONE = (STATION, MONITOR, ADMIN)
ROLES = ANYONE
#: Shorter tokens are refused at start-up (guessable).
MIN_TOKEN_CHARS = 16
#: View arguments that name a room (a room-scoped station may only use its own).
ROOM_ARGS = ("room", "room_number")
TRUE_WORDS = {"1", "true", "yes", "on"}
#: A sign-in session lasts one shift unless API_SESSION_HOURS says otherwise.
DEFAULT_SESSION_HOURS, MAX_SESSION_HOURS = 12.0, 7 * 24.0
#: Which screen of the UI acted (the client says so; recorded in the audit trail).
VIA_HEADER = "X-Sleeplab-Via"
VIA_SCREENS = ("patient-station", "monitoring-station")
FALSE_WORDS = {"0", "false", "no", "off"}
#: The names the API answers to when API_TRUSTED_HOSTS is not set (plus API_HOST).
DEFAULT_TRUSTED_HOSTS = ("localhost", "127.0.0.1", "::1")

log = logging.getLogger(__name__)


class TokenConfigError(ValueError):
    """The token configuration is unusable (the app refuses to start)."""


@dataclass(frozen=True)
class TokenEntry:
    """One known token: its owner's name, role, optional room, and SHA-256 digest."""
    name: str
    role: str
    digest: bytes
    room: int | None = None


@dataclass(frozen=True)
class Caller:
    """Who is calling; ``name``, ``role``, ``user`` and ``via`` are what the audit trail
    records. ``user`` is a signed-in person's user name (``name`` their display name),
    ``session`` the stored id of their session; both None for a static token."""
    name: str
    role: str | None
    address: str | None
    room: int | None = None
    user: str | None = None
    via: str | None = None
    session: str | None = None


@dataclass(frozen=True)
class AuthSettings:
    tokens: tuple[TokenEntry, ...]
    protect_reads: bool
    trust_proxy: bool
    required: bool = False
    session_hours: float = DEFAULT_SESSION_HOURS
    #: Lower-case host names (no port) a request's Host may name; None: any.
    trusted_hosts: frozenset[str] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.tokens) or self.required


# -- configuration ------------------------------------------------------------------
def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _entry(item: dict, where: str) -> TokenEntry:
    if not isinstance(item, dict):
        raise TokenConfigError(f"{where}: expected an object with name, role and token")
    unknown = set(item) - {"name", "role", "token", "token_sha256", "room"}
    if unknown:
        raise TokenConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
    name, role = item.get("name"), item.get("role")
    if not isinstance(name, str) or not name.strip() or len(name) > 50:
        raise TokenConfigError(f"{where}: name must be a non-empty string of at most 50 "
                               f"characters")
    if role not in ROLES:
        raise TokenConfigError(f"{where}: role must be one of {', '.join(ROLES)}")
    room = item.get("room")
    if room is not None:
        if role != STATION:
            raise TokenConfigError(f"{where}: only a station token can name a room")
        try:
            room = validation.positive_id(room, "room")
        except validation.ValidationError:
            raise TokenConfigError(f"{where}: room must be a positive integer") from None
    token, hashed = item.get("token"), item.get("token_sha256")
    if (token is None) == (hashed is None):
        raise TokenConfigError(f"{where}: give exactly one of token or token_sha256")
    if token is not None:
        if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS or token != token.strip():
            raise TokenConfigError(f"{where}: token must be at least {MIN_TOKEN_CHARS} "
                                   f"characters without surrounding spaces")
        value = digest(token)
    else:
        try:
            value = bytes.fromhex(hashed) if isinstance(hashed, str) else b""
        except ValueError:
            value = b""
        if len(value) != 32:
            raise TokenConfigError(f"{where}: token_sha256 must be 64 hex digits")
    return TokenEntry(name=name.strip(), role=role, digest=value, room=room)


def parse_tokens(text: str, source: str = "tokens file") -> list[TokenEntry]:
    """Token entries from a tokens file's text.

    JSON: ``{"tokens": [{"name", "role", "token" | "token_sha256", "room"?}, ...]}`` or
    the bare list. Text: one entry per line, ``name role token [room]`` separated by
    white space; blank lines and lines starting with ``#`` are ignored. Error messages
    name the entry, never the token.
    """
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TokenConfigError(f"{source}: not valid JSON (line {exc.lineno})") from None
        items = data.get("tokens") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise TokenConfigError(f"{source}: expected a list under \"tokens\"")
        entries = [_entry(item, f"{source} entry {i + 1}") for i, item in enumerate(items)]
    else:
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            if len(words) not in (3, 4):
                raise TokenConfigError(f"{source} line {number}: expected 'name role token "
                                       f"[room]'")
            item = dict(zip(("name", "role", "token", "room"), words))
            entries.append(_entry(item, f"{source} line {number}"))
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise TokenConfigError(f"{source}: token names must be unique (the audit trail "
                               f"records them)")
    if len({e.digest for e in entries}) != len(entries):
        raise TokenConfigError(f"{source}: the same token is listed twice")
    return entries


def load_settings(config) -> AuthSettings:
    """Auth settings from the app config (filled from the environment)."""
    entries: list[TokenEntry] = []
    single = config.get("API_TOKEN")
    if single:
        entries.append(_entry({"name": "admin", "role": ADMIN, "token": single}, "API_TOKEN"))
    path = config.get("API_TOKENS_FILE")
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise TokenConfigError(f"API_TOKENS_FILE {path}: cannot read it "
                                   f"({exc.strerror})") from None
        entries.extend(parse_tokens(text, f"API_TOKENS_FILE {path}"))
    if len({e.digest for e in entries}) != len(entries):
        raise TokenConfigError("API_TOKEN is also listed in API_TOKENS_FILE")
    settings = AuthSettings(
        tokens=tuple(entries),
        protect_reads=_flag(config.get("API_PROTECT_READS"), "API_PROTECT_READS", True),
        trust_proxy=_flag(config.get("API_TRUST_PROXY"), "API_TRUST_PROXY", False),
        required=_flag(config.get("API_REQUIRE_AUTH"), "API_REQUIRE_AUTH", False),
        session_hours=session_hours(config.get("API_SESSION_HOURS")),
        trusted_hosts=trusted_hosts(config.get("API_TRUSTED_HOSTS"), config.get("API_HOST")))
    if not settings.enabled:
        log.warning("API authentication is OFF: set API_TOKEN or API_TOKENS_FILE; anyone "
                    "who can reach the API can change pressures and patient data")
    else:
        log.info("API authentication on: %d token(s) and people's sign-ins (sessions of "
                 "%g h); reads %s", len(entries), settings.session_hours,
                 "protected" if settings.protect_reads else "open")
        if not settings.protect_reads:
            log.warning("API_PROTECT_READS=0: anyone who can reach the API can read patient "
                        "names, MRNs, histories and flow images")
    if settings.trusted_hosts is None:
        log.warning("API_TRUSTED_HOSTS=*: the API answers any Host header (only behind a "
                    "proxy that checks it)")
    return settings


def session_hours(value) -> float:
    """``API_SESSION_HOURS``: (0, 168] hours; unset means one 12-hour shift."""
    if value in (None, ""):
        return DEFAULT_SESSION_HOURS
    try:
        hours = float(value)
    except (TypeError, ValueError):
        hours = -1.0
    if not 0 < hours <= MAX_SESSION_HOURS:  # also refuses NaN
        raise TokenConfigError(f"API_SESSION_HOURS must be a number of hours above 0 and "
                               f"at most {MAX_SESSION_HOURS:g}")
    return hours


def _flag(value, name: str, default: bool) -> bool:
    """An on/off setting; unset or empty is ``default``, anything unknown stops the start."""
    word = str(value if value is not None else "").strip().lower()
    if not word:
        return default
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise TokenConfigError(f"{name} must be 1 or 0 (true/false, yes/no, on/off), not "
                           f"{value!r}")


def trusted_hosts(value: str | None, bind_host: str | None = None) -> frozenset[str] | None:
    """The host names from ``API_TRUSTED_HOSTS`` (comma-separated; ``*``: any host, None);
    unset: :data:`DEFAULT_TRUSTED_HOSTS` and the bind host ``API_HOST`` (the quick start
    gives the UI ``http://API_HOST:API_PORT``; a wildcard such as 0.0.0.0 is no name a
    rebinding page can use)."""
    if value is None or not str(value).strip():
        names = [*DEFAULT_TRUSTED_HOSTS, bind_host or ""]
    else:
        names = [name.strip() for name in str(value).split(",")]
        if "*" in names:
            return None
    return frozenset(name for name in (n.strip().lower().strip("[]").rstrip(".")
                                       for n in names) if name)


def host_name(header: str) -> str | None:
    """The host name of a ``Host`` header (lower case, no port or IPv6 brackets), or
    None when it is not a plain ``host[:port]``."""
    try:
        parts = urlsplit(f"//{header}")
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError:
        return None
    if (not parts.hostname or parts.username is not None or parts.password is not None
            or parts.path or parts.query or parts.fragment):
        return None
    return parts.hostname.rstrip(".")


def check_host() -> None:
    """``before_request`` hook: 400 unless the ``Host`` header names a trusted host. A
    request without one (HTTP/1.0) passes: a browser always sends it."""
    allowed = current_app.extensions["auth"].trusted_hosts
    header = request.headers.get("Host")
    if allowed is None or header is None:
        return
    if host_name(header) not in allowed:
        raise BadRequest(f"this API does not answer to the host {header[:100]!r} (Host "
                         "header); the administrator can add it to API_TRUSTED_HOSTS")


def config_from_env() -> dict:
    return {key: os.environ.get(key) for key in
            ("API_TOKEN", "API_TOKENS_FILE", "API_PROTECT_READS", "API_TRUST_PROXY",
             "API_REQUIRE_AUTH", "API_SESSION_HOURS", "API_TRUSTED_HOSTS", "API_HOST")}


def init_app(app) -> None:
    app.extensions["auth"] = load_settings(app.config)
    app.before_request(check_host)  # first: a foreign Host learns nothing, not even a 401
    app.before_request(authorize)


# -- per-view declarations --------------------------------------------------------------
def _declare(kind: str, allowed: tuple[str, ...]):
    def decorate(view):
        view.access = kind
        view.allowed_roles = allowed or ANYONE
        return view
    return decorate


def public(view):
    """Never needs a token (health check, the OpenAPI document)."""
    return _declare("public", ANYONE)(view)


def reads(*allowed: str, always: bool = False):
    """A read: needs a token when auth is on, unless ``API_PROTECT_READS=0`` (and not
    ``always``)."""
    return _declare("protected-read" if always else "read", allowed)


def writes(*allowed: str):
    """A change: needs a token of one of ``allowed`` whenever auth is on."""
    return _declare("write", allowed)


# -- the check ------------------------------------------------------------------------------
def client_address(trust_proxy: bool) -> str | None:
    """The caller's address; the left-most ``X-Forwarded-For`` entry behind a trusted proxy."""
    if trust_proxy:
        forwarded = request.headers.get("X-Forwarded-For", "")
        first = forwarded.split(",")[0].strip()
        if first:
            return first[:100]
    return request.remote_addr


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def identify(token: str, tokens: tuple[TokenEntry, ...]) -> TokenEntry | None:
    """The entry whose token this is: compares with every entry (constant time)."""
    presented = digest(token)
    found = None
    for entry in tokens:
        if hmac.compare_digest(presented, entry.digest):
            found = entry
    return found


def unauthorized(message: str) -> Unauthorized:
    exc = Unauthorized(message)
    exc.www_authenticate = ['Bearer realm="sleeplab"']
    return exc


def _path_room() -> int | None:
    for key in ROOM_ARGS:
        value = (request.view_args or {}).get(key)
        if value is not None:
            try:
                return validation.positive_id(value, key)
            except validation.ValidationError:
                return None  # the view answers 400
    return None


def request_via() -> str | None:
    """The UI screen named in ``X-Sleeplab-Via`` (None without it; 400 when unknown)."""
    via = request.headers.get(VIA_HEADER)
    if via is None:
        return None
    if via not in VIA_SCREENS:
        raise validation.ValidationError(f"{VIA_HEADER} must be one of "
                                         f"{', '.join(VIA_SCREENS)}", VIA_HEADER)
    return via


def session_caller(token: str, address: str | None, via: str | None,
                   reject: bool) -> Caller | None:
    """The person whose sign-in session ``token`` is; None for a token that is not a
    session. An expired or ended session is a 401 when ``reject``, else None."""
    doc = storage.get_storage().get_session(digest(token).hex())
    if doc is None:
        return None
    expires_at = storage.as_utc(doc["expires"]["at"])
    if doc.get("revoked") is not None or expires_at <= storage.utc_now():
        if reject:
            raise unauthorized("the sign-in session has expired or was ended: sign in "
                                "again")
        return None
    return Caller(name=doc["name"], role=doc["role"], address=address, user=doc["user"],
                  via=via, session=doc["_id"])


def authorize() -> None:
    """``before_request`` hook: identify the caller and check the view's access."""
    settings: AuthSettings = current_app.extensions["auth"]
    address = client_address(settings.trust_proxy)
    g.caller = Caller(name="anonymous", role=None, address=address)
    view = current_app.view_functions.get(request.endpoint or "")
    if view is None:
        return  # unknown URL (404/405 follow)
    access = getattr(view, "access", "write")
    allowed = getattr(view, "allowed_roles", (ADMIN,))
    if access == "public":
        return
    via = request_via()
    g.caller = Caller(name="anonymous", role=None, address=address, via=via)
    token = bearer_token()
    if not settings.enabled:
        # Open mode lets everyone in; a person who signed in is still named.
        person = session_caller(token, address, via, reject=False) if token else None
        g.caller = person or g.caller
        return
    needs_token = access in ("write", "protected-read") or settings.protect_reads
    if token is None:
        if needs_token:
            raise unauthorized("this request needs an API token: send 'Authorization: "
                                "Bearer <token>'")
        return
    entry = identify(token, settings.tokens)
    if entry is not None:
        g.caller = Caller(name=entry.name, role=entry.role, address=address, room=entry.room,
                          via=via)
    else:
        g.caller = session_caller(token, address, via, reject=True)
        if g.caller is None:
            raise unauthorized("the API token is not valid (unknown or revoked)")
    role = g.caller.role
    if not needs_token:
        return  # an open read: any valid token may read
    if role not in allowed:
        raise Forbidden(f"a {role} token may not do this (needs {' or '.join(allowed)})")
    room = _path_room()
    if room is not None:
        require_room(room)


def require_room(room: int) -> None:
    """403 unless the caller may act on ``room`` (a room-scoped station: only its own)."""
    caller = current_caller()
    if caller.role == STATION and caller.room is not None and caller.room != room:
        raise Forbidden(f"this station token is for room {caller.room}, not room {room}")


def current_caller() -> Caller:
    return g.get("caller") or Caller(name="anonymous", role=None, address=None)


def main(argv: list[str] | None = None) -> int:
    """``python -m sleeplab.api.auth new NAME ROLE [ROOM]``: print a new tokens-file entry (JSON) with a
    fresh token; ``python -m sleeplab.api.auth sha256`` reads a token on stdin and prints its digest
    (for ``token_sha256``)."""
    import argparse
    import secrets
    import sys

    parser = argparse.ArgumentParser(prog="python -m sleeplab.api.auth", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="a new tokens-file entry with a fresh token")
    new.add_argument("name")
    new.add_argument("role", choices=ROLES)
    new.add_argument("room", nargs="?", type=int)
    commands.add_parser("sha256", help="SHA-256 (hex) of the token read from stdin")
    args = parser.parse_args(argv)
    if args.command == "sha256":
        print(digest(sys.stdin.readline().strip()).hex())
        return 0
    item = {"name": args.name, "role": args.role, "token": secrets.token_urlsafe(32)}
    if args.room is not None:
        item["room"] = args.room
    try:
        _entry(item, "entry")
    except TokenConfigError as exc:
        parser.error(str(exc))
    print(json.dumps(item))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
