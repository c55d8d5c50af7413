"""People who sign in: the sessions routes, their tokens in the access check and the
audit trail, the throttle on failed sign-ins, and the ``accounts.py`` command."""
from __future__ import annotations

import datetime as dt
import io
import json
import logging
import uuid

import mongomock
import pytest

from sleeplab.api import accounts
from sleeplab import storage
from tests.api_support import upload_body
from server import create_app

ADMIN_TOKEN = "admin-token-0123456789abcdef"
PEOPLE = {  # username -> (display name, role, password)
    "ada": ("Dr Ada Lovelace", "monitor", "correct horse battery"),
    "bo": ("Nurse Bo", "station", "staple battery horse"),
    "cy": ("Cy Admin", "admin", "battery staple correct"),
}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
#: The production scrypt cost (the tests below use a cheaper one to stay fast).
REAL_COST = (accounts.SCRYPT_N, accounts.SCRYPT_R, accounts.SCRYPT_P)


@pytest.fixture(autouse=True)
def cheap_hashes(monkeypatch):
    """1 MiB scrypt instead of 16 MiB: each hash records its cost, so every path is
    the same, only faster."""
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**10)
    monkeypatch.setattr(accounts, "SCRYPT_P", 1)
    monkeypatch.setattr(accounts, "_DUMMY", {})


class TtyInput(io.StringIO):
    def isatty(self):
        return True


def add_people(store: storage.Storage, people=PEOPLE) -> None:
    for username, (name, role, password) in people.items():
        assert accounts.main(["add", username, "--role", role, "--name", name], store=store,
                             stdin=io.StringIO(password + "\n")) == 0


def make_client(**config):
    mongo = mongomock.MongoClient(tz_aware=True)
    app = create_app({"TESTING": True, "MONGO_CLIENT": mongo, **config})
    store = storage.Storage(mongo[storage.DEFAULT_DATABASE])
    add_people(store)
    return app.test_client(), store


@pytest.fixture
def secured():
    """Auth on (one static admin token), three people, one patient in room 3."""
    client, store = make_client(API_TOKEN=ADMIN_TOKEN)
    assert client.post("/api/v1/patients", json=upload_body(mrn=12, room=3),
                       headers=ADMIN).status_code == 201
    return client, store


def sign_in(client, username, password=None):
    password = PEOPLE[username.strip().lower()][2] if password is None else password
    return client.post("/api/v1/sessions", json={"username": username, "password": password})


def bearer(session: dict, **extra) -> dict:
    return {"Authorization": f"Bearer {session['token']}", **extra}


def trail(client, room=3):
    return client.get(f"/api/v1/rooms/{room}/audit", headers=ADMIN).get_json()["entries"]


# -- signing in --------------------------------------------------------------------------
def test_sign_in_gives_a_session_that_names_the_person_in_the_audit(secured):
    client, store = secured
    answer = sign_in(client, "ADA ")            # user names are case-insensitive
    assert answer.status_code == 201, answer.data
    session = answer.get_json()
    assert (session["username"], session["name"], session["role"]) == (
        "ada", "Dr Ada Lovelace", "monitor")
    expires = dt.datetime.fromisoformat(session["expires_at"].replace("Z", "+00:00"))
    hours = (expires - dt.datetime.now(dt.timezone.utc)).total_seconds() / 3600
    assert 11.9 < hours <= 12
    # Only the token's SHA-256 is stored.
    stored = store.sessions.find_one({})
    assert session["token"] not in json.dumps(stored, default=str)
    assert stored["_id"] == accounts.auth.digest(session["token"]).hex()

    command = client.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 13, "mrn": 12},
                         headers=bearer(session, **{"X-Sleeplab-Via": "monitoring-station"}))
    assert command.status_code == 201
    entry = store.audit.find_one({"action": "pressure_commanded"})
    assert entry["who"] == {"name": "Dr Ada Lovelace", "role": "monitor", "user": "ada",
                            "via": "monitoring-station"}
    assert trail(client)[0]["who"] == entry["who"]


def test_role_comes_from_the_person(secured):
    client, store = secured
    nurse = sign_in(client, "bo").get_json()
    assert client.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 13, "mrn": 12},
                      headers=bearer(nurse)).status_code == 403
    assert client.get("/api/v1/rooms/3/audit", headers=bearer(nurse)).status_code == 403
    assert client.post("/api/v1/patients", json=upload_body(mrn=12, room=3, pressure=11),
                       headers=bearer(nurse, **{"X-Sleeplab-Via": "patient-station"})
                       ).status_code == 200
    entry = store.audit.find_one({"action": "record_added", "who.user": "bo"})
    assert entry["who"] == {"name": "Nurse Bo", "role": "station", "user": "bo",
                            "via": "patient-station"}


@pytest.mark.parametrize("username,password", [("ada", "wrong password here"),
                                               ("nobody", "correct horse battery")])
def test_wrong_password_and_unknown_user_get_the_same_401(secured, caplog, username,
                                                          password):
    client, store = secured
    before = store.audit.count_documents({})
    with caplog.at_level(logging.INFO, logger="sleeplab.api.accounts"):
        answer = sign_in(client, username, password)
    assert answer.status_code == 401
    assert answer.get_json() == {"status": 401, "error": "Unauthorized",
                                 "message": "unknown user name or wrong password"}
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert store.sessions.count_documents({}) == 0
    assert store.audit.count_documents({}) == before           # not audited
    assert f"sign-in refused for user name '{username}'" in caplog.text   # but logged
    assert password not in caplog.text


@pytest.mark.parametrize("body,field", [
    ({"username": "ada"}, "password"), ({"password": "x" * 12}, "username"),
    ({"username": 5, "password": "x" * 12}, "username"),
    ({"username": "ada", "password": "x" * 12, "role": "admin"}, "role"),
    ({"username": "a" * 51, "password": "x" * 12}, "username"),
])
def test_malformed_sign_in_is_a_400_naming_the_field(secured, body, field):
    client, _ = secured
    answer = client.post("/api/v1/sessions", json=body)
    assert answer.status_code == 400 and answer.get_json()["field"] == field


def test_disabled_person_cannot_sign_in_and_their_sessions_end(secured):
    client, store = secured
    session = sign_in(client, "ada").get_json()
    assert accounts.main(["disable", "ada"], store=store) == 0
    refused = client.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 13, "mrn": 12},
                         headers=bearer(session))
    assert refused.status_code == 401 and "sign in again" in refused.get_json()["message"]
    assert sign_in(client, "ada").status_code == 401
    assert accounts.main(["enable", "ada"], store=store) == 0
    assert sign_in(client, "ada").status_code == 201


def test_expired_session_is_refused(secured):
    client, store = secured
    session = sign_in(client, "ada").get_json()
    store.sessions.update_one({}, {"$set": {"expires": {"at": storage.utc_now()
                                                        - dt.timedelta(seconds=1)}}})
    answer = client.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 13, "mrn": 12},
                        headers=bearer(session))
    assert answer.status_code == 401
    assert answer.get_json()["message"] == ("the sign-in session has expired or was ended: "
                                            "sign in again")
    assert store.audit.count_documents({"action": "pressure_commanded"}) == 0


def test_session_hours_are_configurable():
    client, _ = make_client(API_TOKEN=ADMIN_TOKEN, API_SESSION_HOURS="0.5")
    session = sign_in(client, "ada").get_json()
    expires = dt.datetime.fromisoformat(session["expires_at"].replace("Z", "+00:00"))
    assert (expires - dt.datetime.now(dt.timezone.utc)).total_seconds() < 1800
    with pytest.raises(accounts.auth.TokenConfigError, match="API_SESSION_HOURS"):
        make_client(API_SESSION_HOURS="nan")


def test_sign_out_ends_the_session(secured):
    client, store = secured
    session = sign_in(client, "ada").get_json()
    assert client.delete("/api/v1/sessions/current", headers=bearer(session)).status_code == 204
    assert store.sessions.find_one({})["revoked"] is not None
    assert client.get("/api/v1/rooms/3/audit", headers=bearer(session)).status_code == 401
    assert client.delete("/api/v1/sessions/current", headers=bearer(session)).status_code == 401
    static = client.delete("/api/v1/sessions/current", headers=ADMIN)
    assert static.status_code == 400 and "no sign-in session" in static.get_json()["message"]
    assert client.delete("/api/v1/sessions/current").status_code == 401


def test_failed_sign_ins_are_throttled_per_user_name_and_address(secured):
    client, _ = secured
    now = [1000.0]
    client.application.extensions["sign_in_throttle"] = accounts.Throttle(clock=lambda: now[0])
    for _ in range(accounts.FAILURES_PER_USER):
        assert sign_in(client, "ada", "not her password").status_code == 401
    blocked = sign_in(client, "ada")                    # even the right password waits
    assert blocked.status_code == 429
    assert "too many failed sign-ins" in blocked.get_json()["message"]
    assert int(blocked.headers["Retry-After"]) == accounts.FAILURE_WINDOW_S
    assert sign_in(client, "cy").status_code == 201     # another name from this address
    now[0] += accounts.FAILURE_WINDOW_S
    assert sign_in(client, "ada").status_code == 201    # the window has passed
    # An address trying many names is stopped too (one failure per name).
    for number in range(accounts.FAILURES_PER_ADDRESS):
        assert sign_in(client, f"guess{number}", "x" * 12).status_code == 401
    assert sign_in(client, "bo").status_code == 429
    other = client.post("/api/v1/sessions", json={"username": "bo",
                                                   "password": PEOPLE["bo"][2]},
                        environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert other.status_code == 201                   # from another address


def test_throttle_forgets_old_keys_first():
    throttle = accounts.Throttle(clock=lambda: 0.0)
    for number in range(accounts.THROTTLE_MAX_KEYS + 5):
        throttle.failed([f"user:{number}"])
    assert throttle.wait_s({"user:0": 1}) == 0                  # dropped
    assert throttle.wait_s({f"user:{accounts.THROTTLE_MAX_KEYS + 4}": 1}) > 0


def test_unknown_via_is_a_400(secured):
    client, _ = secured
    answer = client.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 13, "mrn": 12},
                        headers={**ADMIN, "X-Sleeplab-Via": "kitchen"})
    assert answer.status_code == 400 and answer.get_json()["field"] == "X-Sleeplab-Via"


def test_open_mode_still_names_a_signed_in_person():
    client, store = make_client()
    client.post("/api/v1/patients", json=upload_body(mrn=12, room=3))
    session = sign_in(client, "ada").get_json()
    client.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 13, "mrn": 12},
               headers=bearer(session))
    client.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 14, "mrn": 12},
               headers={"Authorization": "Bearer not-a-session-0123456789"})
    who = [e["who"] for e in store.audit.find({"action": "pressure_commanded"}).sort("at", 1)]
    assert who == [{"name": "Dr Ada Lovelace", "role": "monitor", "user": "ada"},
                   {"name": "anonymous", "role": None}]


def test_require_auth_protects_an_api_with_people_only():
    client, _ = make_client(API_REQUIRE_AUTH="1")
    assert client.post("/api/v1/patients", json=upload_body()).status_code == 401
    nurse = sign_in(client, "bo").get_json()
    assert client.post("/api/v1/patients", json=upload_body(),
                       headers=bearer(nurse)).status_code == 201


# -- the accounts command ---------------------------------------------------------------------
@pytest.fixture
def store():
    return storage.Storage(mongomock.MongoClient(tz_aware=True)["people"])


def test_add_stores_a_scrypt_hash_never_the_password(store, capsys, monkeypatch):
    answers = iter(["correct horse battery", "correct horse batter"])
    monkeypatch.setattr(accounts.getpass, "getpass", lambda prompt: next(answers))
    assert accounts.main(["add", "Ada", "--role", "monitor", "--name", "Dr Ada"], store=store,
                         stdin=TtyInput("")) == 1          # a terminal: asks twice
    assert "differ" in capsys.readouterr().err and store.get_user("ada") is None

    password = "correct horse battery"
    assert accounts.main(["add", "Ada", "--role", "monitor", "--name", "Dr Ada"], store=store,
                         stdin=io.StringIO(password + "\n")) == 0
    assert "added ada (monitor): Dr Ada" in capsys.readouterr().out
    doc = store.users.find_one({"_id": "ada"})
    assert password not in json.dumps(doc, default=str)
    assert doc["password"]["scheme"] == "scrypt" and len(doc["password"]["salt"]) == 32
    assert (doc["name"], doc["role"], doc["state"]["disabled"]) == ("Dr Ada", "monitor", False)
    assert accounts.verify_password(password, doc["password"])
    assert not accounts.verify_password(password + "!", doc["password"])
    # The same password gives another hash (a fresh salt each time).
    assert accounts.hash_password(password)["hash"] != doc["password"]["hash"]


def test_production_cost_meets_owasp_for_scrypt(monkeypatch):
    monkeypatch.setattr(accounts, "SCRYPT_N", REAL_COST[0])
    monkeypatch.setattr(accounts, "SCRYPT_P", REAL_COST[2])
    record = accounts.hash_password("correct horse battery")
    n, r, p = record["n"], record["r"], record["p"]
    # OWASP: N=2^17, r=8, p=1, or a smaller N with p raised to match (2^14 -> p=5).
    assert r == 8 and (n, p) in {(2**17, 1), (2**16, 2), (2**15, 3), (2**14, 5), (2**13, 10)}
    assert accounts.verify_password("correct horse battery", record)
    assert not accounts.verify_password("correct horse batterY", record)
    assert not accounts.verify_password("correct horse battery", {**record, "n": "x"})


def test_add_reads_the_password_from_a_prompt_twice(store, monkeypatch):
    answers = iter(["a long enough secret", "a long enough secret"])
    monkeypatch.setattr(accounts.getpass, "getpass", lambda prompt: next(answers))
    assert accounts.main(["add", "bo", "--role", "station"], store=store,
                         stdin=TtyInput("")) == 0
    assert accounts.verify_password("a long enough secret",
                                    store.get_user("bo")["password"])
    assert store.get_user("bo")["name"] == "bo"              # display name defaults


@pytest.mark.parametrize("argv,stdin,message", [
    (["add", "ada", "--role", "monitor"], "short\n", "12 to 1024 characters"),
    (["add", "ada lovelace", "--role", "monitor"], "correct horse battery\n", "user name must"),
    (["add", "ada", "--role", "monitor", "--name", "bad\x07name"], "correct horse battery\n",
     "control characters"),
    (["passwd", "nobody"], "correct horse battery\n", "no person named nobody"),
    (["disable", "nobody"], "", "no person named nobody"),
])
def test_command_errors_name_the_problem(store, capsys, argv, stdin, message):
    assert accounts.main(argv, store=store, stdin=io.StringIO(stdin)) == 1
    assert message in capsys.readouterr().err
    assert store.users.count_documents({}) == 0


def test_password_is_never_a_command_line_argument(store, capsys):
    with pytest.raises(SystemExit):
        accounts.main(["add", "ada", "--role", "monitor", "--password", "x" * 12], store=store)
    assert "unrecognized arguments" in capsys.readouterr().err


def test_duplicate_passwd_role_and_list(store, capsys):
    add_people(store)
    assert accounts.main(["add", "ada", "--role", "admin"], store=store,
                         stdin=io.StringIO("another password\n")) == 1
    assert "already exists" in capsys.readouterr().err
    old = store.get_user("ada")["password"]
    assert accounts.main(["passwd", "ada"], store=store,
                         stdin=io.StringIO("a brand new password\n")) == 0
    assert accounts.verify_password("a brand new password", store.get_user("ada")["password"])
    assert not accounts.verify_password(PEOPLE["ada"][2], store.get_user("ada")["password"])
    assert store.get_user("ada")["password"] != old
    assert accounts.main(["role", "ada", "admin"], store=store) == 0
    assert accounts.main(["disable", "bo"], store=store) == 0
    capsys.readouterr()
    assert accounts.main(["list"], store=store) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["user", "role", "state", "name"]
    assert lines[1].split() == ["ada", "admin", "active", "Dr", "Ada", "Lovelace"]
    assert lines[2].split()[:3] == ["bo", "station", "disabled"]
    assert "scrypt" not in out and all(u["password"]["hash"] not in out
                                       for u in store.users.find())


def test_passwd_and_role_end_existing_sessions(secured):
    client, store = secured
    first, second = sign_in(client, "ada").get_json(), sign_in(client, "cy").get_json()
    assert accounts.main(["passwd", "ada"], store=store,
                         stdin=io.StringIO("a brand new password\n")) == 0
    assert accounts.main(["role", "cy", "station"], store=store) == 0
    for session in (first, second):
        assert client.get("/api/v1/rooms/3/audit", headers=bearer(session)).status_code == 401
    assert sign_in(client, "cy").get_json()["role"] == "station"


@pytest.mark.slow
def test_command_says_when_the_database_is_down(capsys, monkeypatch):
    monkeypatch.setenv("MONGODB_URI", "mongodb://127.0.0.1:9/sleeplab"
                       "?serverSelectionTimeoutMS=200")
    assert accounts.main(["list"]) == 1
    assert "the database is unavailable" in capsys.readouterr().err


# -- the real database ----------------------------------------------------------------------
def test_sessions_on_nx27017(local_mongo):
    uri = local_mongo.uri(database=f"t{uuid.uuid4().hex[:12]}")
    app = create_app({"TESTING": True, "MONGODB_URI": uri, "API_TOKEN": ADMIN_TOKEN})
    client = app.test_client()
    store = accounts.open_storage(uri)
    add_people(store, {"ada": PEOPLE["ada"]})
    assert accounts.main(["disable", "ada"], store=store) == 0
    assert accounts.main(["enable", "ada"], store=store) == 0
    assert store.get_user("ada")["state"]["disabled"] is False     # a real boolean
    client.post("/api/v1/patients", json=upload_body(mrn=12, room=3), headers=ADMIN)
    session = sign_in(client, "ada").get_json()
    assert client.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 13, "mrn": 12},
                      headers=bearer(session)).status_code == 201
    assert trail(client)[0]["who"] == {"name": "Dr Ada Lovelace", "role": "monitor",
                                       "user": "ada"}
    assert client.delete("/api/v1/sessions/current", headers=bearer(session)).status_code == 204
    assert client.get("/api/v1/rooms/3/audit", headers=bearer(session)).status_code == 401
    assert sign_in(client, "ada").status_code == 201


def test_passwords_and_session_tokens_never_reach_the_logs(secured, caplog):
    client, _ = secured
    caplog.set_level(logging.DEBUG)
    sign_in(client, "ada", "a wrong password for ada")
    session = sign_in(client, "ada").get_json()
    client.get("/api/v1/rooms/3/audit", headers=bearer(session))
    client.delete("/api/v1/sessions/current", headers=bearer(session))
    client.get("/api/v1/rooms/3/audit", headers=bearer(session))      # ended: 401
    assert "signed in: ada (monitor)" in caplog.text
    for secret in (session["token"], PEOPLE["ada"][2], "a wrong password for ada"):
        assert secret not in caplog.text
