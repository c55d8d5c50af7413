"""Cost of people's sign-in: one password hash, one sign-in, and a request made with a
session token (one database lookup) compared with a static token.

    python -m benchmarks.bench_signin [--repeats 3] [--requests 200]

Starts its own nx-27017 on a free loopback port (temporary data dir), adds one person
and one patient, and times in-process (Flask test client over TCP to the database, no
gunicorn): ``accounts.hash_password`` (production scrypt cost), ``POST
/api/v1/sessions``, and ``GET /api/v1/rooms/3`` with protected reads, sent with a static
monitor token and with the person's session token, alternating; median of each repeat;
prints a markdown table.
"""
from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

from benchmarks.bench_record_count import median_ms
from server import create_app
from sleeplab.api import accounts
from tests.api_support import upload_body
from tools.local_mongo import LocalMongo, free_port

STATIC_TOKEN = "bench-monitor-token-0123456789"
PASSWORD = "correct horse battery staple"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        database = LocalMongo(data_dir=Path(tmp) / "db", port=free_port())
        database.start()
        try:
            tokens = Path(tmp) / "tokens.txt"
            tokens.write_text(f"ward-monitor monitor {STATIC_TOKEN}\n")
            uri = database.uri("bench_signin")
            client = create_app({"MONGODB_URI": uri, "API_TOKENS_FILE": str(tokens),
                                 "API_PROTECT_READS": "1"}).test_client()
            store = accounts.open_storage(uri)
            accounts.main(["add", "ada", "--role", "monitor"], store=store,
                          stdin=io.StringIO(PASSWORD + "\n"))
            client.post("/api/v1/patients", json=upload_body(mrn=12, room=3),
                        headers={"Authorization": f"Bearer {STATIC_TOKEN}"})

            def sign_in():
                answer = client.post("/api/v1/sessions",
                                     json={"username": "ada", "password": PASSWORD})
                assert answer.status_code == 201, answer.data
                return answer.get_json()["token"]

            session = sign_in()
            headers = {"static token": {"Authorization": f"Bearer {STATIC_TOKEN}"},
                       "session token": {"Authorization": f"Bearer {session}"}}
            rows: dict[str, list[float]] = {name: [] for name in
                                            ("hash_password", "POST /api/v1/sessions",
                                             *(f"GET /api/v1/rooms/3, {h}" for h in headers))}
            for _ in range(args.repeats):
                rows["hash_password"].append(median_ms(
                    lambda: accounts.hash_password(PASSWORD), 5))
                rows["POST /api/v1/sessions"].append(median_ms(sign_in, 5))
                for name, header in headers.items():
                    rows[f"GET /api/v1/rooms/3, {name}"].append(median_ms(
                        lambda: client.get("/api/v1/rooms/3", headers=header),
                        args.requests))
        finally:
            database.stop()
    print(f"| operation | median ms per repeat ({args.repeats} repeats) |")
    print("|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {' / '.join(f'{v:.2f}' for v in values)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
