"""Property-based fuzzing of every operation of the OpenAPI document (schemathesis).

For each operation in ``GET /api/openapi.json`` schemathesis generates requests from
the documented schemas: ``POSITIVE_CASES`` that fit them and ``NEGATIVE_CASES`` that
break them (wrong types, out-of-range numbers, missing required fields, bad path
values). Every response must be documented for the operation (status code, content
type, body schema: the error shape for every 4xx) and none may be a 5xx.

Operations without any input (``GET /api/rooms``, ``/health``...) get the same number
of cases with random query strings (which must be ignored). Path values that name
stored things (record and command ids) are sometimes real ones, and some generated
recordings are replaced by a real CPAP file, so the fuzzing also reaches the
success paths. In-process (Flask test client + mongomock), derandomised: the same
cases on every run. The last test fuzzes any operation not fuzzed yet in the session
(so it passes alone too) and prints the per-operation counts.
"""
from __future__ import annotations

import collections
import string

import mongomock
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (content_type_conformance,
                                               response_schema_conformance,
                                               status_code_conformance)

from tools import cpap_synth
from sleeplab.api import openapi
from tests.api_support import upload_body
from server import create_app

pytestmark = pytest.mark.slow

POSITIVE_CASES = 100
NEGATIVE_CASES = 100
MIN_CASES = 200
#: One generated recording in REAL_FILE_EVERY is replaced by a real CPAP file.
REAL_FILE_EVERY = 8
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]

#: Requests sent and answers seen, per operation label and mode (filled by the tests).
COUNTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
STATUSES: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


def fuzz_settings(max_examples: int):
    return settings(max_examples=max_examples, derandomize=True, database=None,
                    deadline=None, phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck))


class World:
    """One app and database for the whole module: what one operation's cases create
    (patients, records, commands) is what the later operations read."""

    def __init__(self):
        self.app = create_app({"TESTING": True,
                               "MONGO_CLIENT": mongomock.MongoClient(tz_aware=True),
                               "MAX_UPLOAD_BYTES": 512 * 1024})
        client = self.app.test_client()
        self.record_ids, self.command_ids = [], []
        for room in (1, 2, 3):
            body = client.post("/api/v1/patients", json=upload_body(mrn=room, room=room)).json
            self.record_ids.append(body["record"]["id"])
            command = client.put(f"/api/v1/rooms/{room}/pressure",
                                 json={"pressure_cmh2o": 10, "mrn": room}).json
            self.command_ids.append(command["id"])
        self.recording = cpap_synth.generate(seed=11, duration_s=20.0, rate_bpm=15.0)[0]
        self.schema = schemathesis.openapi.from_wsgi("/api/openapi.json", self.app)
        self.operations = {op.label: op for op in
                           (result.ok() for result in self.schema.get_all_operations())}


_WORLD: World | None = None


def world() -> World:
    global _WORLD
    if _WORLD is None:
        _WORLD = World()
    return _WORLD


def operation_labels() -> list[str]:
    return list(world().operations)


def definition(operation) -> dict:
    """The operation as written in the served document."""
    return openapi.document()["paths"][operation.path][operation.method.lower()]


def has_inputs(operation) -> bool:
    return bool(definition(operation)["parameters"]) or "requestBody" in definition(operation)


QUERY_NOISE = st.dictionaries(st.text(string.ascii_letters + "_$[]", min_size=1, max_size=12),
                              st.text(max_size=20), max_size=3)


def run_cases(label: str, mode: GenerationMode, max_examples: int) -> list[str]:
    """Generate and send the cases of one operation in one mode; return the failures."""
    w = world()
    operation = w.operations[label]
    failures: list[str] = []
    ids = {"record_id": w.record_ids, "command_id": w.command_ids}
    real = [p["name"] for p in definition(operation)["parameters"] if p["name"] in ids]
    noise = st.just({}) if has_inputs(operation) else QUERY_NOISE

    @fuzz_settings(max_examples)
    @given(case=operation.as_strategy(generation_mode=mode), noise=noise,
           pick=st.integers(0, 3 * REAL_FILE_EVERY))
    def fuzz(case, noise, pick):
        # Real ids in a quarter of the cases, so the found-paths are fuzzed too.
        for name in real:
            if pick % 4 == 0:
                case.path_parameters[name] = ids[name][pick % len(ids[name])]
        if (mode is GenerationMode.POSITIVE and isinstance(case.body, dict)
                and "file" in case.body and pick % REAL_FILE_EVERY == 0):
            case.body["file"] = w.recording
        response = case.call(params=noise or None)
        COUNTS[label][mode.value] += 1
        STATUSES[label][response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as exc:
            failures.append(str(exc)[:2000])
        if response.status_code >= 500:
            failures.append(f"{response.status_code} for {case.as_curl_command()}")

    fuzz()
    return failures


def can_be_negative(operation) -> bool:
    """Only an operation with a constrained input has invalid data to generate (a free
    string path value such as ``record_id`` has none)."""
    op = definition(operation)
    return "requestBody" in op or any(p["in"] != "path" or p["schema"].get("type") != "string"
                                      for p in op["parameters"])


def fuzz_operation(label: str) -> list[str]:
    """All the cases of one operation (both modes when it has invalid input); the failures."""
    operation = world().operations[label]
    if not can_be_negative(operation):
        return run_cases(label, GenerationMode.POSITIVE, MIN_CASES)
    return (run_cases(label, GenerationMode.POSITIVE, POSITIVE_CASES)
            + run_cases(label, GenerationMode.NEGATIVE, NEGATIVE_CASES))


@pytest.mark.parametrize("label", operation_labels())
def test_fuzz_operation(label):
    failures = fuzz_operation(label)
    assert not failures, f"{len(failures)} failing cases; first:\n{failures[0]}"
    assert sum(COUNTS[label].values()) >= MIN_CASES, COUNTS[label]


def _raise_bug(self, room):
    raise RuntimeError("bug")


@pytest.mark.parametrize("target, replacement, status, message", [
    ("sleeplab.storage.Storage.get_room", _raise_bug, 500, "Server error"),
    ("server.room_out", lambda doc: {"room": doc["_id"]}, 200, "required property"),
], ids=["storage-bug-500", "room-without-its-keys"])
def test_the_checks_can_fail(monkeypatch, target, replacement, status, message):
    """The harness reports a 5xx and an answer that breaks the documented schema."""
    # Room 1 occupied again (fuzzed uploads may have moved its patient elsewhere).
    assert world().app.test_client().post(
        "/api/v1/patients", json=upload_body(mrn=1, room=1)).status_code in (200, 201)
    monkeypatch.setattr(target, replacement)
    case = world().operations["GET /api/v1/rooms/{room}"].Case(path_parameters={"room": 1})
    response = case.call()
    assert response.status_code == status
    with pytest.raises(FailureGroup, match=message):
        case.validate_response(response, checks=CHECKS)


def counts_table() -> str:
    lines = ["| operation | positive | negative | total | answers |",
             "|---|---:|---:|---:|---|"]
    for label, counts in COUNTS.items():
        answers = ", ".join(f"{code}×{n}" for code, n in sorted(STATUSES[label].items()))
        lines.append(f"| `{label}` | {counts['positive']} | {counts['negative']} | "
                     f"{sum(counts.values())} | {answers} |")
    total = sum(sum(c.values()) for c in COUNTS.values())
    lines.append(f"| **{len(COUNTS)} operations** | | | **{total}** | 5xx: "
                 f"{sum(n for s in STATUSES.values() for code, n in s.items() if code >= 500)} |")
    return "\n".join(lines)


def test_zz_every_operation_was_fuzzed(capsys):
    """Every operation of the document gets its cases (those not fuzzed yet in this
    session, e.g. when this test runs alone or after ``-k``, are fuzzed now); prints
    the counts."""
    failures = {label: found for label in world().operations if label not in COUNTS
                if (found := fuzz_operation(label))}
    assert not failures, f"failing cases in {sorted(failures)}"
    assert set(COUNTS) == set(world().operations)
    assert all(sum(c.values()) >= MIN_CASES for c in COUNTS.values()), COUNTS
    with capsys.disabled():
        print("\n\nOpenAPI fuzzing: requests per operation\n" + counts_table())
