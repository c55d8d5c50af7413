"""Access control: every documented operation x {no token, bad token, wrong role, right
role}, token files, constant-time comparison, tokens kept out of logs."""
from __future__ import annotations

import hmac
import io
import json
import logging
import re
from unittest import mock

import pytest

from sleeplab.api import auth
from sleeplab.api import openapi
from tests.api_support import upload_body

TOKENS = {  # name -> (role, room, token)
    "admin-1": ("admin", None, "adm-0123456789abcdefghij"),
    "monitor-1": ("monitor", None, "mon-0123456789abcdefghij"),
    "station-3": ("station", 3, "st3-0123456789abcdefghij"),
    "station-4": ("station", 4, "st4-0123456789abcdefghij"),
    "station-any": ("station", None, "sta-0123456789abcdefghij"),
}
BAD_TOKEN = "not-a-known-token-0123456789"
SECRETS = [t for _, _, t in TOKENS.values()] + [BAD_TOKEN]

# The expected access of every operation, written out here independently of the code:
# (kind, roles). kind: "public" never needs a token; "read" needs one only when reads
# are protected; "always" (writes and the audit trail) needs one whenever auth is on.
ANY, WARD = ("station", "monitor", "admin"), ("monitor", "admin")
UPLOADERS = ("station", "admin")
EXPECTED = {
    ("post", "/patients"): ("always", UPLOADERS),
    ("get", "/patients"): ("read", WARD),
    ("get", "/patients/{mrn}"): ("read", WARD),
    ("get", "/patients/{mrn}/records"): ("read", WARD),
    ("get", "/patients/{mrn}/records.csv"): ("read", WARD),
    ("get", "/records/{record_id}"): ("read", WARD),
    ("get", "/records/{record_id}/report.{fmt}"): ("read", WARD),
    ("get", "/patients/{mrn}/report.{fmt}"): ("read", WARD),
    ("post", "/rooms/{room}/stream"): ("always", UPLOADERS),
    ("get", "/rooms/{room}/live"): ("read", WARD),
    ("get", "/rooms/{room}/titration"): ("read", WARD),
    ("get", "/rooms/{room}/titration.csv"): ("read", WARD),
    ("get", "/nights/{session_id}/recording.txt"): ("read", WARD),
    ("get", "/records/{record_id}/image"): ("read", WARD),
    ("get", "/rooms"): ("read", WARD),
    ("get", "/rooms/{room}"): ("read", ANY),
    ("post", "/rooms/{room}/recordings"): ("always", UPLOADERS),
    ("put", "/rooms/{room}/pressure"): ("always", WARD),
    ("get", "/rooms/{room}/pressure"): ("read", ANY),
    ("post", "/rooms/{room}/pressure/{command_id}/applied"): ("always", UPLOADERS),
    ("get", "/rooms/{room}/pressure/history"): ("read", ANY),
    ("get", "/rooms/{room}/audit"): ("always", WARD),
    ("get", "/openapi.json"): ("public", ANY),
    ("post", "/sessions"): ("public", ANY),
    ("delete", "/sessions/current"): ("always", ANY),
    ("post", "/add_patient"): ("always", UPLOADERS),
    ("get", "/CPAP_query/{room_number}"): ("read", ANY),
    ("get", "/new_cpap_pressure/{room_number}/{value}"): ("always", WARD),
    ("get", "/get_all_patients"): ("read", WARD),
    ("get", "/health"): ("public", ANY),
}


def short_path(path: str) -> str:
    return re.sub(r"^/api(/v1)?(?=/)", "", path)


OPERATIONS = sorted((method, path) for path, item in openapi.document()["paths"].items()
                    for method in item)


def token_file_json(tmp_path, entries=None) -> str:
    entries = entries if entries is not None else [
        {"name": name, "role": role, "token": token, **({"room": room} if room else {})}
        for name, (role, room, token) in TOKENS.items()]
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": entries}))
    return str(path)


def bearer(name: str) -> dict:
    return {"Authorization": f"Bearer {TOKENS[name][2]}"}


#: A live night's first chunk (the same body again is a retry: stored once).
STREAM_BODY = {"mrn": 12, "session_id": "night-auth-0001", "sequence": 0, "pressure_cmh2o": 8,
               "samples": "".join(f"{i / 100:.2f},3000,3100,3000,3100,0,0\n" for i in range(50))}


def seed(client) -> dict:
    """A patient in room 3 with a record, an image and a command; returns the ids."""
    created = client.post("/api/v1/patients", json=upload_body(mrn=12, room=3),
                          headers=bearer("admin-1")).get_json()
    command = client.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 12, "mrn": 12},
                         headers=bearer("admin-1")).get_json()
    night = client.post("/api/v1/rooms/3/stream", json=STREAM_BODY, headers=bearer("admin-1"))
    assert night.status_code == 201, night.get_json()
    return {"record_id": created["record"]["id"], "command_id": command["id"],
            "session_id": STREAM_BODY["session_id"]}


@pytest.fixture(scope="module", params=[False, True], ids=["reads-open", "reads-protected"])
def served(request, tmp_path_factory, make_app):
    app = make_app(API_TOKENS_FILE=token_file_json(tmp_path_factory.mktemp("tokens")),
                   API_PROTECT_READS="1" if request.param else "0")
    client = app.test_client()
    return client, seed(client), request.param


def call(client, method, path, ids, headers):
    url = path.format(mrn=12, room=3, room_number=3, value=11, fmt="pdf", **ids)
    kwargs = {"headers": headers}
    if (method, short_path(path)) == ("post", "/rooms/{room}/recordings"):
        kwargs["data"] = {"mrn": "12", "cpap_pressure_cmh2o": "10",
                          "file": (io.BytesIO(b"not a recording\n"), "x.txt")}
        kwargs["content_type"] = "multipart/form-data"
    elif method in ("post", "put"):
        body = {"/add_patient": {"patient_mrn": 12, "room_number": 3, "patient_name": "Ada"},
                "/rooms/{room}/pressure": {"pressure_cmh2o": 13, "mrn": 12},
                "/rooms/{room}/stream": STREAM_BODY}.get(
                    short_path(path), upload_body(mrn=12, room=3))
        if "applied" not in path:
            kwargs["json"] = body
    return getattr(client, method)(url, **kwargs)


def wrong_token_for(roles: tuple[str, ...], path: str) -> str | None:
    """A valid token the operation must refuse (403): a role outside ``roles``, or a
    station token for another room than 3; None if every token may call it."""
    for name, (role, room, _) in TOKENS.items():
        if role not in roles:
            return name
    return "station-4" if "{room" in path else None


def test_the_table_covers_every_documented_operation():
    assert {(m, short_path(p)) for m, p in OPERATIONS} == set(EXPECTED)


@pytest.mark.parametrize("method,path", OPERATIONS)
def test_operation_access(served, method, path):
    client, ids, protect_reads = served
    kind, roles = EXPECTED[(method, short_path(path))]
    needs_token = kind == "always" or (kind == "read" and protect_reads)

    anonymous = call(client, method, path, ids, {})
    bad = call(client, method, path, ids, {"Authorization": f"Bearer {BAD_TOKEN}"})
    if kind == "public":
        assert anonymous.status_code not in (401, 403)
        assert bad.status_code not in (401, 403)  # a public route ignores the header
        return
    if needs_token:
        assert anonymous.status_code == 401, anonymous.data
        assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
        assert anonymous.get_json()["status"] == 401
    else:
        assert anonymous.status_code not in (401, 403), anonymous.data
    assert bad.status_code == 401  # a wrong token is refused even where none is needed
    assert bad.get_json()["error"] == "Unauthorized"

    wrong_name = wrong_token_for(roles, path)
    wrong = call(client, method, path, ids, bearer(wrong_name)) if wrong_name else None
    if wrong is None:
        pass
    elif needs_token:
        assert wrong.status_code == 403, wrong.data
        assert wrong.get_json()["status"] == 403 and wrong.get_json()["message"]
    else:
        assert wrong.status_code not in (401, 403)
    for name, (role, room, _) in TOKENS.items():
        if role in roles and room in (None, 3):
            right = call(client, method, path, ids, bearer(name))
            assert right.status_code not in (401, 403), (name, right.data)
            assert right.status_code < 500


def test_documented_roles_match_the_table(client):
    document = client.get("/api/openapi.json").get_json()
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for path, item in document["paths"].items():
        for method, op in item.items():
            kind, roles = EXPECTED[(method, short_path(path))]
            if kind == "public":
                assert op["security"] == []
            else:
                assert tuple(op["x-roles"]) == roles, (method, path)
                assert ({} in op["security"]) == (kind == "read"), (method, path)
                assert {"401", "403"} <= set(op["responses"])


# -- room-scoped stations -----------------------------------------------------------------
@pytest.fixture
def secured(tmp_path, make_app):
    client = make_app(API_TOKENS_FILE=token_file_json(tmp_path)).test_client()
    return client, seed(client)


def test_room_station_uploads_only_for_its_room(secured):
    client, _ = secured
    own = client.post("/api/v1/patients", json=upload_body(mrn=21, room=3),
                      headers=bearer("station-3"))
    assert own.status_code == 201
    other = client.post("/api/v1/patients", json=upload_body(mrn=22, room=4),
                        headers=bearer("station-3"))
    assert other.status_code == 403 and "room 3" in other.get_json()["message"]
    legacy = client.post("/add_patient", json={"patient_mrn": 23, "room_number": 4},
                         headers=bearer("station-3"))
    assert legacy.status_code == 403
    assert client.post("/api/v1/patients", json=upload_body(mrn=22, room=4),
                       headers=bearer("station-any")).status_code == 201
    assert client.get("/api/v1/patients/22", headers=bearer("admin-1")).status_code == 200
    assert client.get("/api/v1/patients/23", headers=bearer("admin-1")).status_code == 404


def test_room_station_acknowledges_only_its_room(secured):
    client, ids = secured
    url = f"/api/v1/rooms/3/pressure/{ids['command_id']}/applied"
    assert client.post(url, headers=bearer("station-4")).status_code == 403
    assert client.get("/api/v1/rooms/3/pressure", headers=bearer("admin-1")
                      ).get_json()["applied"] is False
    done = client.post(url, headers=bearer("station-3"))
    assert done.status_code == 200 and done.get_json()["applied"] is True


def test_monitor_cannot_upload_and_station_cannot_command(secured):
    client, _ = secured
    assert client.post("/api/v1/patients", json=upload_body(mrn=30, room=3),
                       headers=bearer("monitor-1")).status_code == 403
    assert client.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 9, "mrn": 12},
                      headers=bearer("station-3")).status_code == 403
    assert client.get("/new_cpap_pressure/3/9", headers=bearer("station-3")).status_code == 403
    assert client.get("/CPAP_query/3", headers=bearer("station-3")).get_json() == 12  # unchanged


def test_legacy_pressure_get_needs_a_monitor_token(secured):
    client, _ = secured
    poll = {"headers": bearer("station-3")}  # the bedside station polls with its token
    assert client.get("/new_cpap_pressure/3/9").status_code == 401
    assert client.get("/CPAP_query/3", **poll).get_json() == 12
    assert client.get("/new_cpap_pressure/3/9", headers=bearer("monitor-1")).status_code == 200
    assert client.get("/CPAP_query/3", **poll).get_json() == 9


@pytest.mark.parametrize("header", ["Basic YWRtaW46YWRtaW4=", "Bearer", "Bearer ",
                                    "adm-0123456789abcdefghij",
                                    "Bearer adm-0123456789abcdefghi",
                                    "Bearer adm-0123456789abcdefghijX"])
def test_malformed_or_near_miss_authorization_is_401(secured, header):
    client, _ = secured
    response = client.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 9, "mrn": 12},
                          headers={"Authorization": header})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="sleeplab"'
    assert set(response.get_json()) == {"status", "error", "message"}


def test_scheme_is_case_insensitive(secured):
    client, _ = secured
    response = client.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 9, "mrn": 12},
                          headers={"Authorization": f"bearer {TOKENS['monitor-1'][2]}"})
    assert response.status_code == 201


def test_single_api_token_is_an_admin(make_app):
    token = "single-admin-token-0123456789"
    client = make_app(API_TOKEN=token).test_client()
    assert client.post("/api/v1/patients", json=upload_body()).status_code == 401
    ok = client.post("/api/v1/patients", json=upload_body(),
                     headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 201
    trail = client.get("/api/v1/rooms/3/audit", headers={"Authorization": f"Bearer {token}"})
    assert trail.get_json()["entries"][0]["who"] == {"name": "admin", "role": "admin"}


def test_open_mode_warns_and_lets_everyone_in(caplog, make_app):
    with caplog.at_level(logging.WARNING, logger="sleeplab.api.auth"):
        client = make_app().test_client()
    assert "authentication is OFF" in caplog.text
    assert client.post("/api/v1/patients", json=upload_body()).status_code == 201
    assert client.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 9, "mrn": 12}).status_code == 201
    assert client.get("/api/v1/rooms/3/audit").status_code == 200


def test_settings_come_from_the_environment(monkeypatch, tmp_path, make_app):
    monkeypatch.setenv("API_TOKENS_FILE", token_file_json(tmp_path))
    monkeypatch.setenv("API_PROTECT_READS", "yes")
    client = make_app().test_client()
    assert client.get("/api/v1/rooms").status_code == 401
    assert client.get("/api/v1/rooms", headers=bearer("monitor-1")).status_code == 200
    assert client.get("/health").status_code == 200


# -- constant-time comparison -----------------------------------------------------------------
@pytest.mark.parametrize("name", [None, "admin-1", "station-any"])
def test_every_known_token_is_compared_with_compare_digest(secured, name):
    client, _ = secured
    headers = bearer(name) if name else {"Authorization": f"Bearer {BAD_TOKEN}"}
    with mock.patch("sleeplab.api.auth.hmac.compare_digest", wraps=hmac.compare_digest) as spy:
        client.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 9, "mrn": 12}, headers=headers)
    # No early exit: the first entry matching does not stop the comparisons.
    assert spy.call_count == len(TOKENS)
    for args, _ in spy.call_args_list:
        assert all(isinstance(a, bytes) and len(a) == 32 for a in args)  # digests only


def test_only_digests_are_kept_in_memory(tmp_path, make_app):
    app = make_app(API_TOKENS_FILE=token_file_json(tmp_path))
    settings = app.extensions["auth"]
    held = repr(settings) + repr(app.config.get("API_TOKEN"))
    for secret in SECRETS:
        assert secret not in held
    assert {e.name for e in settings.tokens} == set(TOKENS)


# -- tokens never logged -----------------------------------------------------------------------
def test_tokens_never_appear_in_logs(tmp_path, caplog, make_app):
    caplog.set_level(logging.DEBUG)
    client = make_app(API_TOKENS_FILE=token_file_json(tmp_path),
                      API_PROTECT_READS="1").test_client()
    seed(client)
    for name in TOKENS:
        client.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 9, "mrn": 12}, headers=bearer(name))
        client.get("/api/v1/rooms", headers=bearer(name))
    client.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 9, "mrn": 12},
               headers={"Authorization": f"Bearer {BAD_TOKEN}"})
    with mock.patch("server.get_storage", side_effect=RuntimeError("boom")):
        crashed = client.get("/api/v1/rooms/3", headers=bearer("admin-1"))  # logs a traceback
    assert crashed.status_code == 500
    assert "unhandled error" in caplog.text
    for secret in SECRETS:
        assert secret not in caplog.text


# -- token files ---------------------------------------------------------------------------------
def test_text_token_file(tmp_path, make_app):
    path = tmp_path / "tokens.txt"
    path.write_text("# name role token [room]\n\nward-a monitor mon-0123456789abcdefghij\n"
                    "bed-3   station st3-0123456789abcdefghij 3\n")
    entries = auth.parse_tokens(path.read_text())
    assert [(e.name, e.role, e.room) for e in entries] == [("ward-a", "monitor", None),
                                                          ("bed-3", "station", 3)]
    client = make_app(API_TOKENS_FILE=str(path)).test_client()
    assert client.post("/api/v1/patients", json=upload_body(room=3), headers={
        "Authorization": "Bearer st3-0123456789abcdefghij"}).status_code == 201


def test_token_file_may_hold_only_sha256_digests(tmp_path, make_app):
    import hashlib
    token = "hashed-token-0123456789abcdef"
    path = token_file_json(tmp_path, [{"name": "ops", "role": "admin",
                                       "token_sha256": hashlib.sha256(token.encode()).hexdigest()}])
    client = make_app(API_TOKENS_FILE=path).test_client()
    assert client.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 9, "mrn": 12},
                      headers={"Authorization": f"Bearer {token}"}).status_code == 404  # no patient


SECRET = "secret-token-0123456789abcdef"


@pytest.mark.parametrize("text,message", [
    ('{"tokens": [{"name": "a", "role": "nurse", "token": "%s"}]}' % SECRET, "role must be"),
    ('{"tokens": [{"name": "a", "role": "admin", "token": "short"}]}', "at least 16"),
    ('{"tokens": [{"name": "a", "role": "monitor", "token": "%s", "room": 3}]}' % SECRET,
     "only a station"),
    ('{"tokens": [{"name": "a", "role": "station", "token": "%s", "room": 0}]}' % SECRET,
     "room must be"),
    ('[{"name": "a", "role": "admin", "token": "%s"}, {"name": "a", "role": "admin", '
     '"token": "%sX"}]' % (SECRET, SECRET), "unique"),
    ('[{"name": "a", "role": "admin", "token": "%s"}, {"name": "b", "role": "admin", '
     '"token": "%s"}]' % (SECRET, SECRET), "listed twice"),
    ('[{"name": "a", "role": "admin"}]', "exactly one of token"),
    ('[{"name": "a", "role": "admin", "token": "%s", "extra": 1}]' % SECRET, "unknown key"),
    ('{"tokens": [', "not valid JSON"),
    ('{"tokens": {}}', "expected a list"),
    (f"a admin {SECRET} 3 extra", "line 1: expected"),
    (f"a admin {SECRET} 3", "only a station"),
    ('[{"name": "a", "role": "admin", "token_sha256": "abc"}]', "64 hex digits"),
])
def test_bad_token_files_are_refused_without_echoing_the_token(tmp_path, text, message,
                                                              make_app):
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(auth.TokenConfigError, match=message) as info:
        make_app(API_TOKENS_FILE=str(path))
    assert SECRET not in str(info.value)


def test_missing_token_file_refuses_to_start(tmp_path, make_app):
    with pytest.raises(auth.TokenConfigError, match="cannot read"):
        make_app(API_TOKENS_FILE=str(tmp_path / "nope.json"))


def test_cli_makes_entries_the_api_accepts(capsys, monkeypatch):
    assert auth.main(["new", "bed-7", "station", "7"]) == 0
    item = json.loads(capsys.readouterr().out)
    assert (item["name"], item["role"], item["room"]) == ("bed-7", "station", 7)
    assert len(item["token"]) >= 40
    monkeypatch.setattr("sys.stdin", io.StringIO(item["token"] + "\n"))
    assert auth.main(["sha256"]) == 0
    hashed = {"name": "bed-7", "role": "station", "room": 7,
              "token_sha256": capsys.readouterr().out.strip()}
    entry, = auth.parse_tokens(json.dumps([hashed]))
    assert auth.identify(item["token"], (entry,)) == entry
    with pytest.raises(SystemExit):
        auth.main(["new", "desk", "monitor", "3"])  # only stations name a room
    assert "only a station" in capsys.readouterr().err
