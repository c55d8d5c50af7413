"""Static checks of the container deployment (no Docker engine runs on these machines).

They check what can be checked without building: the compose file's structure, that
every file the Dockerfile copies exists, that the containers, the launcher and the tests
start gunicorn with the one configuration file, and MongoDB's users and roles.
"""
import json
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MONGO_INIT = ROOT / "docker" / "mongo-init.js"


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
    uri = urlsplit(api["environment"]["MONGODB_URI"])
    assert (uri.scheme, uri.hostname, uri.port, uri.path) == ("mongodb", "mongo", 27017,
                                                              "/sleeplab")
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


@pytest.fixture
def gunicorn_settings(monkeypatch):
    """gunicorn.conf.py's settings, as the container's environment makes them."""
    for name, value in {"API_HOST": "0.0.0.0", "API_PORT": "5000", "API_WORKERS": "3"}.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(ROOT / "gunicorn.conf.py"))


def test_one_gunicorn_configuration_for_container_launcher_and_tests(dockerfile,
                                                                     gunicorn_settings):
    from tools import api_process
    from sleeplab.api import serving
    cmd = json.loads(instructions(dockerfile, "CMD")[0])
    assert cmd == ["gunicorn", "--config", "gunicorn.conf.py"]  # nothing else overrides it
    assert api_process.gunicorn_command()[1:] == ["--config", str(ROOT / "gunicorn.conf.py")]
    assert "gunicorn_command(" in (ROOT / "tools" / "launcher.py").read_text()
    settings = gunicorn_settings
    assert settings["wsgi_app"] == "server:create_app()"
    assert settings["worker_class"] == "sleeplab.api.serving.Worker"
    assert (settings["bind"], settings["workers"]) == (["0.0.0.0:5000"], 3)
    assert settings["keepalive"] == serving.HEAD_TIMEOUT_S  # the request-head time limit
    assert settings["graceful_timeout"] < __import__("tools.launcher").launcher.STOP_TIMEOUT_S
    # Instances must not share (and delete) one control socket.
    assert settings["control_socket_disable"] is True
    import server
    assert callable(server.create_app)


def test_container_env_sets_what_the_configuration_reads(dockerfile, compose):
    env = " ".join(instructions(dockerfile, "ENV"))
    for name in ("API_HOST=0.0.0.0", "API_PORT=5000", "API_WORKERS=", "API_THREADS="):
        assert name in env
    assert compose["services"]["api"]["environment"]["HEALTHCHECK_URL"].endswith(":5000/health")


def copied(dockerfile) -> list[str]:
    """The sources of the Dockerfile's COPY instructions (files, folders or patterns)."""
    return [source for args in instructions(dockerfile, "COPY")
            for source in shlex.split(args)[:-1]]


def ships(sources: list[str], path: str) -> bool:
    """Whether a COPY source covers ``path`` (relative to the project folder)."""
    return any(Path(path).match(source) or Path(path).is_relative_to(source.rstrip("/"))
               for source in sources)


#: Imports what production runs, as the container does (its working folder is the
#: project): the entry points, every module of the sleeplab package and the gunicorn
#: configuration; prints the project files loaded (not the libraries: ./test.sh's .venv
#: lies inside the project folder).
PRODUCTION_IMPORTS = """
import importlib, json, pkgutil, runpy, sys
from pathlib import Path
import server, patient_streamlit, cpap_measurements, validation, sleeplab
for info in pkgutil.walk_packages(sleeplab.__path__, "sleeplab."):
    importlib.import_module(info.name)
runpy.run_path("gunicorn.conf.py")
server.create_app()
root, env = Path.cwd().resolve(), Path(sys.prefix).resolve()
files = {name: Path(m.__file__).resolve() for name, m in sys.modules.items()
         if getattr(m, "__file__", None)}
print(json.dumps(sorted((name, str(path.relative_to(root))) for name, path in files.items()
                        if path.is_relative_to(root) and not path.is_relative_to(env))))
"""


@pytest.fixture(scope="module")
def production_modules() -> dict[str, str]:
    """Module name -> project file of everything production imports (fresh interpreter)."""
    out = subprocess.run([sys.executable, "-c", PRODUCTION_IMPORTS], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=120)
    return dict(json.loads(out.stdout.splitlines()[-1]))


def test_production_code_never_imports_the_tools(production_modules):
    """tools/ (launcher, local database, synthetic data, test servers) is not in the
    image: an entry point or library module that imported it would fail there."""
    assert {"server", "patient_streamlit", "sleeplab.storage"} <= set(production_modules)
    assert [name for name in production_modules
            if name == "tools" or name.startswith("tools.")] == []


def test_dockerfile_ships_what_production_imports_and_no_tools(dockerfile, production_modules):
    sources = copied(dockerfile)
    for name, path in production_modules.items():
        assert ships(sources, path), f"the image lacks {path} ({name})"
    assert ships(sources, "gunicorn.conf.py") and ships(sources, "sample_data/apnea_1.txt")
    for folder in ("tools", "tests", "benchmarks"):  # development only
        assert not ships(sources, f"{folder}/__init__.py"), folder


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


# -- MongoDB access control: the API may only insert into the audit trail --------------
def js_list(name: str) -> list[str]:
    match = re.search(rf"const {name} = \[(.*?)\];", MONGO_INIT.read_text(), re.S)
    assert match, f"{name} not found in {MONGO_INIT.name}"
    return re.findall(r'"(\w+)"', match.group(1))


def storage_collections() -> set[str]:
    """The collections storage.Storage uses (read from its constructor)."""
    from sleeplab import storage
    used = set()

    class Recorder(dict):
        def __getitem__(self, name):
            used.add(name)
            return None

    storage.Storage(Recorder())
    return used


def test_compose_runs_mongo_with_access_control(compose):
    mongo_env = compose["services"]["mongo"]["environment"]
    api_env = compose["services"]["api"]["environment"]
    # Root credentials switch the official image's access control on, and are required.
    assert mongo_env["MONGO_INITDB_ROOT_USERNAME"]
    assert re.fullmatch(r"\$\{MONGO_ROOT_PASSWORD:\?[^}]+\}", mongo_env["MONGO_INITDB_ROOT_PASSWORD"])
    assert re.fullmatch(r"\$\{SLEEPLAB_DB_PASSWORD:\?[^}]+\}", mongo_env["SLEEPLAB_DB_PASSWORD"])
    init = [v for v in compose["services"]["mongo"]["volumes"]
            if "/docker-entrypoint-initdb.d/" in v]
    assert len(init) == 1
    source, target = init[0].split(":")[:2]
    assert (ROOT / source).resolve() == MONGO_INIT and target.endswith(".js")
    # The API logs in as its own user, never as root, in the database the script sets up.
    uri = urlsplit(api_env["MONGODB_URI"])
    assert uri.username == mongo_env["SLEEPLAB_DB_USER"] != mongo_env["MONGO_INITDB_ROOT_USERNAME"]
    assert uri.password == "${SLEEPLAB_DB_PASSWORD}"  # required by the mongo service
    assert parse_qs(uri.query)["authSource"] == [mongo_env["MONGO_INITDB_DATABASE"]]
    assert uri.path == "/" + mongo_env["MONGO_INITDB_DATABASE"]
    assert not any("MONGO_ROOT" in str(value) for value in api_env.values())


def test_the_apis_role_appends_to_the_audit_trail_only():
    working, append_only = js_list("WORKING_COLLECTIONS"), js_list("APPEND_ONLY_COLLECTIONS")
    assert append_only == ["audit"]
    # Every collection the API uses has a privilege (a new one needs a line in the script).
    assert storage_collections() <= set(working) | set(append_only)
    assert not set(working) & set(append_only)
    actions = set(js_list("APPEND_ONLY_ACTIONS"))
    assert {"find", "insert"} <= actions
    assert not actions & {"update", "remove", "dropCollection", "dropIndex", "renameCollectionSameDB",
                          "collMod", "compact", "convertToCapped", "emptycapped"}
    assert {"update", "remove"} <= set(js_list("WORKING_ACTIONS"))
    script = MONGO_INIT.read_text()
    assert 'roles: [{ role: "sleeplabApi", db: dbName }]' in script  # the user has no other
    assert "process.env.SLEEPLAB_DB_PASSWORD" in script


def test_every_gunicorn_instance_redacts_tokens_in_its_access_log():
    """The one gunicorn configuration names the redacting logger (tokens in URLs)."""
    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert settings["logger_class"] == "sleeplab.api.logconfig.RedactingLogger"
