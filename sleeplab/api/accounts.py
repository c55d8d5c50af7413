"""People who sign in: accounts, password hashes, sign-in sessions, and the command
that manages them.

A person has a user name, a display name (what the audit trail shows), a role
(station, monitor or admin, as for tokens) and a password, stored only as a scrypt
hash (stdlib :func:`hashlib.scrypt`, parameters kept with each hash so they can be
raised later). ``POST /api/v1/sessions`` checks the password and hands out a random
session token; the database keeps only its SHA-256 (collection ``sessions``), with the
person's name and role and an expiry (``API_SESSION_HOURS``, default 12). The token
is then a bearer token like the static ones (:func:`auth.authorize`).

Failed sign-ins answer the same for an unknown user and a wrong password, are logged
(user name and address, never the password) but not audited, and are throttled per
user name and per address (:class:`Throttle`).

Managing people (the password is read from a prompt, or the first line of stdin when
that is not a terminal; never from the command line)::

    python -m sleeplab.api.accounts add ada --role monitor --name "Dr Ada Lovelace"
    python -m sleeplab.api.accounts passwd ada
    python -m sleeplab.api.accounts role ada admin
    python -m sleeplab.api.accounts disable ada        # her sessions end at once
    python -m sleeplab.api.accounts enable ada
    python -m sleeplab.api.accounts list

The database is ``MONGODB_URI`` (default: the quick start's local database).
"""
from __future__ import annotations

import argparse
import datetime as dt
import getpass
import hashlib
import hmac
import logging
import os
import re
import secrets
import sys
import threading
import time
from collections import deque

from werkzeug.exceptions import TooManyRequests

from sleeplab.api import auth
from sleeplab import storage
import validation

log = logging.getLogger(__name__)

#: scrypt cost: 16 MiB and ~0.2 s per hash here; OWASP's equivalent of N=2^17, r=8, p=1.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 5
SALT_BYTES, KEY_BYTES = 16, 32
#: Memory OpenSSL may use for one hash (128 * r * N bytes, with room to spare).
SCRYPT_MAXMEM = 64 * 2**20
MIN_PASSWORD_CHARS, MAX_PASSWORD_CHARS = 12, 1024
MAX_USERNAME_CHARS = 50
USERNAME = re.compile(rf"[a-z0-9][a-z0-9._@-]{{0,{MAX_USERNAME_CHARS - 1}}}")
TOKEN_BYTES = 32
#: Failed sign-ins allowed per user name and per address within the window.
FAILURES_PER_USER, FAILURES_PER_ADDRESS, FAILURE_WINDOW_S = 5, 20, 15 * 60
#: Keys the throttle remembers at most (old ones are dropped first).
THROTTLE_MAX_KEYS = 10_000
REFUSED = "unknown user name or wrong password"


class AccountError(ValueError):
    """A management command cannot be carried out (message for the operator)."""


# -- rules ------------------------------------------------------------------------------
def clean_username(value) -> str:
    """A user name: lower case letters, digits and ``. _ @ -``, at most 50 characters."""
    name = value.strip().lower() if isinstance(value, str) else ""
    if not USERNAME.fullmatch(name):
        raise AccountError(f"user name must be 1 to {MAX_USERNAME_CHARS} letters, digits or "
                           f"'. _ @ -', starting with a letter or digit")
    return name


def clean_display_name(value) -> str:
    """The name the audit trail shows: plain text, at most 100 characters."""
    try:
        name = validation.text(value, "name", validation.MAX_NAME_CHARS)
    except validation.ValidationError as exc:
        raise AccountError(exc.message) from None
    if name is None:
        raise AccountError("name must not be empty")
    return name


def check_new_password(password: str) -> str:
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise AccountError(f"the password must have {MIN_PASSWORD_CHARS} to "
                           f"{MAX_PASSWORD_CHARS} characters")
    return password


# -- password hashes ------------------------------------------------------------------------
def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=SCRYPT_MAXMEM, dklen=KEY_BYTES)


def hash_password(password: str) -> dict:
    """The stored form of a password: scheme, cost, salt and hash (hex)."""
    salt = secrets.token_bytes(SALT_BYTES)
    return {"scheme": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P,
            "salt": salt.hex(),
            "hash": _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P).hex()}


def verify_password(password: str, stored: dict) -> bool:
    """True when ``password`` gives ``stored``'s hash (compared in constant time)."""
    try:
        computed = _scrypt(password, bytes.fromhex(stored["salt"]), int(stored["n"]),
                           int(stored["r"]), int(stored["p"]))
        return hmac.compare_digest(computed, bytes.fromhex(stored["hash"]))
    except (KeyError, TypeError, ValueError):  # a damaged record never signs anyone in
        return False


_DUMMY: dict = {}


def _dummy_hash() -> dict:
    """A hash to check unknown user names against: they take as long as real ones."""
    if not _DUMMY:
        _DUMMY.update(hash_password(secrets.token_urlsafe(16)))
    return _DUMMY


# -- throttling failed sign-ins ----------------------------------------------------------------
class Throttle:
    """Failed sign-ins per key (a user name, an address) within a sliding window.

    In memory, per API process (each gunicorn worker counts its own), so an attacker
    gets at most ``workers`` times the limit; a hand-written 40 lines instead of a rate
    limiting dependency because the counting must be by outcome (failures only).
    """

    def __init__(self, window_s: float = FAILURE_WINDOW_S, clock=time.monotonic):
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[str, deque] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque:
        times = self._failures.get(key, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def wait_s(self, limits: dict[str, int]) -> float:
        """Seconds until a key over its limit (``{key: limit}``) may try again; 0 if none."""
        now = self.clock()
        with self._lock:
            waits = [times[-limit] + self.window_s - now
                     for key, limit in limits.items()
                     if len(times := self._recent(key, now)) >= limit]
        return max(waits, default=0.0)

    def failed(self, keys) -> None:
        now = self.clock()
        with self._lock:
            for key in keys:
                times = self._recent(key, now)
                times.append(now)
                self._failures.pop(key, None)
                self._failures[key] = times          # newest last: dropped last
            while len(self._failures) > THROTTLE_MAX_KEYS:
                self._failures.pop(next(iter(self._failures)))

    def forget(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)


def throttle_of(app) -> Throttle:
    """The app's throttle (one per app, so tests do not share counts)."""
    return app.extensions.setdefault("sign_in_throttle", Throttle())


# -- sign in and out ---------------------------------------------------------------------
def credential(value, field: str, max_chars: int) -> str:
    """A user name or password as sent to sign in: a non-empty string ≤ max_chars."""
    if not isinstance(value, str) or not value:
        raise validation.ValidationError(f"{field} is required (a string)", field)
    if len(value) > max_chars:
        raise validation.ValidationError(f"{field} must be at most {max_chars} characters",
                                         field)
    return value


def sign_in(store: storage.Storage, username: str, password: str, address: str | None,
            hours: float, throttle: Throttle) -> dict:
    """Check a user name and password (each already a :func:`credential`, as the
    ``SignIn`` request model checks them); a new session ``{token, expires_at, username,
    name, role}``. 401 for an unknown user, a wrong password or a disabled account
    (one message for all), 429 after too many failures for the name or the address."""
    username = username.strip().lower()
    keys = {f"user:{username}": FAILURES_PER_USER, f"address:{address}": FAILURES_PER_ADDRESS}
    wait = throttle.wait_s(keys)
    if wait > 0:
        log.warning("sign-in throttled for user name %r from %s", username, address)
        raise TooManyRequests(f"too many failed sign-ins for this user name or address: "
                              f"try again in {max(1, round(wait / 60))} minute(s)",
                              retry_after=max(1, int(wait + 0.999)))
    user = store.get_user(username)
    ok = verify_password(password, user["password"] if user else _dummy_hash())
    if not ok or user is None or (user.get("state") or {}).get("disabled"):
        throttle.failed(keys)
        log.warning("sign-in refused for user name %r from %s", username, address)
        raise auth.unauthorized(REFUSED)
    throttle.forget(f"user:{username}")
    token = secrets.token_urlsafe(TOKEN_BYTES)
    expires_at = storage.utc_now() + dt.timedelta(hours=hours)
    store.add_session(auth.digest(token).hex(), user, expires_at, address)
    log.info("signed in: %s (%s) from %s", username, user["role"], address)
    return {"token": token, "expires_at": expires_at, "username": username,
            "name": user["name"], "role": user["role"]}


# -- the management command ---------------------------------------------------------------------
def read_password(stdin, confirm: bool) -> str:
    """A password from a prompt (twice when ``confirm``) or stdin's first line."""
    if stdin.isatty():
        password = getpass.getpass("Password: ")
        if confirm and getpass.getpass("Password again: ") != password:
            raise AccountError("the two passwords differ")
        return password
    return stdin.readline().rstrip("\r\n")


def open_storage(uri: str | None = None) -> storage.Storage:
    """Storage on ``MONGODB_URI`` (default: the quick start's local database)."""
    import pymongo

    client = pymongo.MongoClient(uri or os.environ.get("MONGODB_URI") or storage.DEFAULT_URI,
                                 tz_aware=True, serverSelectionTimeoutMS=5000)
    try:
        database = client.get_default_database()
    except pymongo.errors.ConfigurationError:  # URI without a database name
        database = client[storage.DEFAULT_DATABASE]
    return storage.Storage(database)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sleeplab.api.accounts",
        description="Manage the people who sign in to Sleep Lab Monitor (database: "
                    "MONGODB_URI). Passwords are read from a prompt or stdin, never "
                    "from the command line.")
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="add a person (asks for the password)")
    add.add_argument("username")
    add.add_argument("--role", required=True, choices=auth.ROLES)
    add.add_argument("--name", help="the name the audit trail shows (default: username)")
    commands.add_parser("passwd", help="set a new password (ends their sessions)"
                        ).add_argument("username")
    role = commands.add_parser("role", help="change a person's role (ends their sessions)")
    role.add_argument("username")
    role.add_argument("role", choices=auth.ROLES)
    for command, what in (("disable", "stop a person signing in (ends their sessions)"),
                          ("enable", "let a disabled person sign in again")):
        commands.add_parser(command, help=what).add_argument("username")
    commands.add_parser("list", help="list people (never their password hashes)")
    return parser


def run_command(args, store: storage.Storage, stdin) -> str:
    """Carry out one parsed command; the line to print."""
    if args.command == "list":
        rows = [f"{u['_id']:<24} {u['role']:<8} "
                f"{'disabled' if (u.get('state') or {}).get('disabled') else 'active':<9}"
                f"{u['name']}" for u in store.list_users()]
        return "\n".join([f"{'user':<24} {'role':<8} {'state':<9}name", *rows])
    username = clean_username(args.username)
    if args.command == "add":
        name = clean_display_name(args.name if args.name is not None else username)
        password = check_new_password(read_password(stdin, confirm=True))
        if not store.add_user(username, name, args.role, hash_password(password)):
            raise AccountError(f"{username} already exists (passwd changes the password)")
        return f"added {username} ({args.role}): {name}"
    if args.command == "passwd":
        values = {"password": hash_password(check_new_password(
            read_password(stdin, confirm=True)))}
    elif args.command == "role":
        values = {"role": args.role}
    else:
        values = {"disabled": args.command == "disable"}
    if not store.update_user(username, **values):
        raise AccountError(f"no person named {username} (add them first)")
    return f"{args.command}: {username} done" + ("" if args.command == "enable"
                                                 else "; their sessions have ended")


def main(argv: list[str] | None = None, store: storage.Storage | None = None,
         stdin=None) -> int:
    args = _parser().parse_args(argv)
    try:
        print(run_command(args, store or open_storage(), stdin or sys.stdin))
    except AccountError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except storage.DatabaseError as exc:
        print(f"error: the database is unavailable ({type(exc).__name__}); is it running "
              f"and is MONGODB_URI right?", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
