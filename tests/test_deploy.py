"""Static checks of the container deployment (no Docker engine runs on these machines).

They check what can be checked without building: the compose file's structure, that
every file the Dockerfile copies exists, and that the containers' commands match the
application's real entry points.
"""
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def dockerfile():
    # Join continuation lines so each instruction is one line.
    return (ROOT / "Dockerfile").read_text().replace("\\\n", " ")


def instructions(dockerfile, name):
    return [line.split(None, 1)[1] for line in dockerfile.splitlines()
            if line.strip().upper().startswith(name + " ")]


def test_compose_has_official_mongo_with_volume_and_healthcheck(compose):
    mongo = compose["services"]["mongo"]
    assert re.fullmatch(r"mongo:\d+(\.\d+)*", mongo["image"])
    volume = mongo["volumes"][0].split(":")
    assert volume[1] == "/data/db" and volume[0] in compose["volumes"]
    assert "ping" in " ".join(mongo["healthcheck"]["test"])


def test_compose_api_is_scalable_and_waits_for_mongo(compose):
    api = compose["services"]["api"]
    assert "container_name" not in api  # a fixed name makes --scale api=3 fail
    assert api["depends_on"]["mongo"]["condition"] == "service_healthy"
    assert api["environment"]["MONGODB_URI"].startswith("mongodb://mongo:27017/")
    host_ports = api["ports"][0].split(":")[0]
    assert "-" in host_ports, "a single host port cannot be shared by several replicas"


def test_compose_ui_runs_streamlit_against_the_api_service(compose):
    ui = compose["services"]["ui"]
    assert ui["image"] == compose["services"]["api"]["image"]
    assert ui["command"][:3] == ["streamlit", "run", "patient_streamlit.py"]
    assert (ROOT / ui["command"][2]).is_file()
    assert ui["environment"]["API_URL"] == "http://api:5000"
    assert ui["environment"]["HEALTHCHECK_URL"].endswith("/_stcore/health")


def test_dockerfile_is_slim_non_root_with_healthcheck(dockerfile):
    assert instructions(dockerfile, "FROM")[0].startswith("python:3.11-slim")
    user = instructions(dockerfile, "USER")[-1].strip()
    assert user not in ("root", "0")
    assert instructions(dockerfile, "HEALTHCHECK")


def test_dockerfile_copies_only_existing_files(dockerfile):
    for args in instructions(dockerfile, "COPY"):
        *sources, _dest = shlex.split(args)
        for source in sources:
            assert list(ROOT.glob(source)), f"Dockerfile copies {source}, which does not exist"
    assert any("requirements.txt" in run for run in instructions(dockerfile, "RUN"))


def test_container_and_launcher_run_the_same_app_factory(dockerfile):
    target = '"server:create_app()"'
    assert target in instructions(dockerfile, "CMD")[0]
    assert "server:create_app()" in (ROOT / "launcher.py").read_text()
    import server
    assert callable(server.create_app)


def test_compose_requires_a_token_for_the_api_and_sign_in_for_the_ui(compose):
    api_env = compose["services"]["api"]["environment"]
    ui_env = compose["services"]["ui"]["environment"]
    # ${VAR:?message}: compose refuses to start without the token (never an open API).
    assert re.fullmatch(r"\$\{SLEEPLAB_API_TOKEN:\?[^}]+\}", api_env["API_TOKEN"])
    # The UI is served to the network: people sign in; it holds no token of its own.
    assert "--server.address=0.0.0.0" in compose["services"]["ui"]["command"]
    assert ui_env["SLEEPLAB_SIGN_IN"] == "1"
    assert not {"SLEEPLAB_API_TOKEN", "SLEEPLAB_STATION_TOKEN", "SLEEPLAB_MONITOR_TOKEN",
                "API_TOKEN", "API_TOKENS_FILE"} & set(ui_env)
    assert api_env["API_PROTECT_READS"].endswith(":-1}")  # patient data not readable openly
