"""The container and deployment files, checked without a container engine.

No Docker engine runs on these machines, so these tests read docker/Dockerfile,
.dockerignore, docker/docker-compose.yml and both Dagster instance files the way the
engine and Dagster would, and check what a build or `compose up` would rely on: every
copied file exists and reaches the build context, the user is not root, the paths the
image declares are the user's, the services wait for healthy dependencies, and the
instance configuration is one Dagster accepts.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from dagster import AssetKey
from dagster._config import process_config, resolve_to_config_type
from dagster._core.instance.config import dagster_instance_config
from dagster._core.instance.ref import InstanceRef
from dagster._utils.tags import TagConcurrencyLimitsCounter

from fdnix_assets_tests.conftest import REPO_ROOT

DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
COMPOSE_FILE = REPO_ROOT / "docker" / "docker-compose.yml"
DEPLOY_INSTANCE = REPO_ROOT / "docker" / "dagster.yaml"
DEPLOY_WORKSPACE = REPO_ROOT / "docker" / "workspace.yaml"
LOCAL_INSTANCE = REPO_ROOT / "dagster.yaml"
REQUIREMENTS_LOCK = REPO_ROOT / "requirements.lock"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
DATASET_PREFIX_TAG = "fdnix/dataset-prefix"
DATASETS_POOL = "fdnix_datasets"
DAGSTER_SERVICES = ("user_code", "webserver", "daemon")

# SPEC "Environment variables": the original indexer's names and the ones added here.
SPEC_VARIABLES = (
    "AWS_REGION",
    "BEDROCK_ROLE_ARN",
    "ARTIFACTS_BUCKET",
    "BEDROCK_INPUT_BUCKET",
    "BEDROCK_OUTPUT_BUCKET",
    "PROCESSING_MODE",
    "OUTPUT_PATH",
    "OUTPUT_MINIFIED_PATH",
    "LANCEDB_DATA_KEY",
    "LANCEDB_MINIFIED_KEY",
    "LANCEDB_PATH",
    "BEDROCK_MODEL_ID",
    "BEDROCK_OUTPUT_DIMENSIONS",
    "BEDROCK_BATCH_SIZE",
    "BEDROCK_POLL_INTERVAL",
    "BEDROCK_MAX_WAIT_TIME",
    "PUBLISH_LAYER",
    "LAYER_ARN",
    "FTS_STOPWORDS",
    "FTS_STEMMER",
    "VECTOR_INDEX_PARTITIONS",
    "VECTOR_INDEX_SUB_VECTORS",
    "NIXPKGS",
    "NIXPKGS_JSON",
    "EMBEDDING_BACKEND",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_BEDROCK",
    "AWS_ENDPOINT_URL_LAMBDA",
)
POSTGRES_ENV = {
    "DAGSTER_POSTGRES_HOST": "postgres",
    "DAGSTER_POSTGRES_PORT": "5432",
    "DAGSTER_POSTGRES_USER": "dagster",
    "DAGSTER_POSTGRES_PASSWORD": "not-a-real-password",
    "DAGSTER_POSTGRES_DB": "dagster",
}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str
    line: int


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions in order, with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, value = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), value.strip(), start))
    assert not pending, f"{path} ends inside a continued line"
    return instructions


def args_of(instructions: list[Instruction]) -> dict[str, str]:
    values: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ARG" and "=" in instruction.value:
            name, _, default = instruction.value.partition("=")
            values[name] = default
    return values


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    """The image's environment as the last ENV of each name sets it."""
    values: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ENV":
            for pair in shlex.split(instruction.value):
                name, _, value = pair.partition("=")
                values[name] = value
    return values


def copy_sources(instruction: Instruction) -> tuple[list[str], str]:
    value = instruction.value
    parts = json.loads(value) if value.startswith("[") else shlex.split(value)
    parts = [part for part in parts if not part.startswith("--")]
    return parts[:-1], parts[-1]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: ``**`` spans directories, ``*`` and ``?`` do not."""
    regex = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            regex, index = regex + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            regex, index = regex + ".*", index + 2
        elif pattern[index] == "*":
            regex, index = regex + "[^/]*", index + 1
        elif pattern[index] == "?":
            regex, index = regex + "[^/]", index + 1
        else:
            regex, index = regex + re.escape(pattern[index]), index + 1
    return re.compile(regex)


def dockerignore_excludes(relative: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching a path or one of its parents decides."""
    parts = PurePosixPath(relative).parts
    candidates = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _pattern_regex(pattern.removeprefix("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def test_base_image_is_nixos_nix_with_a_pinned_version(dockerfile: list[Instruction]) -> None:
    bases = [i.value.split()[0] for i in dockerfile if i.keyword == "FROM"]
    assert bases, "no FROM"
    image, _, tag = bases[0].partition(":")
    assert image == "nixos/nix"
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"{bases[0]} is not pinned to a release"


def test_every_copied_file_exists_and_reaches_the_build_context(
    dockerfile: list[Instruction],
) -> None:
    patterns = dockerignore_patterns()
    copies = [i for i in dockerfile if i.keyword in ("COPY", "ADD")]
    assert copies
    for instruction in copies:
        assert "--from" not in instruction.value, "no multi-stage copies expected"
        sources, _ = copy_sources(instruction)
        for source in sources:
            path = REPO_ROOT / source
            assert path.exists(), f"line {instruction.line}: {source} is not in the repository"
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            files = [f for f in files if "__pycache__" not in f.parts]
            left_out = [
                f.relative_to(REPO_ROOT).as_posix()
                for f in files
                if dockerignore_excludes(f.relative_to(REPO_ROOT).as_posix(), patterns)
            ]
            assert files, f"line {instruction.line}: {source} is empty"
            assert not left_out, f"line {instruction.line}: .dockerignore keeps out {left_out}"


def test_dockerignore_keeps_out_what_the_image_must_not_carry() -> None:
    patterns = dockerignore_patterns()
    for path in (".venv/bin/python", ".git/HEAD", "out/fdnix.lancedb", "test-artifacts/ui.png"):
        assert dockerignore_excludes(path, patterns), f"{path} would be sent to the engine"
    assert dockerignore_excludes("fdnix_assets/__pycache__/settings.cpython-311.pyc", patterns)
    assert not dockerignore_excludes("fdnix_assets/settings.py", patterns)


def test_runs_as_a_non_root_user_set_before_the_entry_point(
    dockerfile: list[Instruction],
) -> None:
    keywords = [i.keyword for i in dockerfile]
    users = [i for i in dockerfile if i.keyword == "USER"]
    assert users, "no USER: the container would run as root"
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    last_user = users[-1].value.split(":")[0]
    assert last_user not in ("root", "0")

    # The account the image creates for that user has a non-zero uid.
    args = args_of(dockerfile)
    passwd_lines = re.findall(r'echo "([^"]+)" >> /etc/passwd', DOCKERFILE.read_text())
    accounts = {line.split(":")[0]: line.split(":")[2] for line in passwd_lines}
    assert last_user in accounts, f"USER {last_user} is not created in /etc/passwd"
    uid = re.sub(r"\$\{(\w+)\}", lambda match: args[match.group(1)], accounts[last_user])
    assert int(uid) >= 1000


def test_paths_the_image_declares_belong_to_its_user(dockerfile: list[Instruction]) -> None:
    env = env_of(dockerfile)
    assert env["OUTPUT_PATH"] == "/out/fdnix-data.lancedb"
    assert env["OUTPUT_MINIFIED_PATH"] == "/out/fdnix.lancedb"
    assert env["HF_HUB_OFFLINE"] == "1"

    volumes = [i.value for i in dockerfile if i.keyword == "VOLUME"]
    assert any(
        "/out" in json.loads(v) if v.startswith("[") else "/out" in v.split() for v in volumes
    )

    chown = next(i.value for i in dockerfile if i.keyword == "RUN" and "chown -R" in i.value)
    owned = [p for p in chown.split("chown -R", 1)[1].split("&&")[0].split() if p.startswith("/")]
    workdir = [i.value for i in dockerfile if i.keyword == "WORKDIR"][-1]
    for path in (
        "/out",
        env["HOME"],
        env["NIX_STATE_DIR"],
        env["XDG_CACHE_HOME"],
        env["DAGSTER_HOME"],
        workdir,
    ):
        assert any(path == root or path.startswith(root.rstrip("/") + "/") for root in owned), (
            f"{path} is not made writable for the user (chown -R covers {owned})"
        )

    # The instance DAGSTER_HOME names ships in the image: the local one for `docker run`.
    copies = {copy_sources(i)[1]: copy_sources(i)[0] for i in dockerfile if i.keyword == "COPY"}
    assert copies[f"{env['DAGSTER_HOME']}/dagster.yaml"] == ["dagster.yaml"]


def test_entry_point_runs_the_entrypoint_module(dockerfile: list[Instruction]) -> None:
    entrypoints = [i for i in dockerfile if i.keyword == "ENTRYPOINT"]
    assert len(entrypoints) == 1
    command = json.loads(entrypoints[0].value)
    assert command == ["python", "-m", "fdnix_assets.entrypoint"]
    assert importlib.util.find_spec(command[2]) is not None


def test_dependencies_install_from_the_pinned_lock_with_torch_for_the_cpu(
    dockerfile: list[Instruction],
) -> None:
    installs = [i.value for i in dockerfile if i.keyword == "RUN" and "pip install" in i.value]
    lock_install = next(v for v in installs if "requirements.lock" in v)
    assert "--no-deps" in lock_install and "pip check" in lock_install
    assert f"--extra-index-url {TORCH_CPU_INDEX}" in lock_install

    pins = [
        line.strip()
        for line in REQUIREMENTS_LOCK.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    unpinned = [line for line in pins if not re.fullmatch(r"[A-Za-z0-9_.\-]+==[^\s=]+", line)]
    assert not unpinned, f"requirements.lock has entries without an exact version: {unpinned}"
    names = {line.split("==")[0].lower() for line in pins}
    for needed in ("dagster", "dagster-webserver", "dagster-postgres", "torch", "setuptools"):
        assert needed in names, f"requirements.lock does not pin {needed}"

    # The CPU index is for the image only: CI installs torch from the wheel on disk.
    ci_script = REPO_ROOT / ".ci" / "run"
    if ci_script.exists():
        assert TORCH_CPU_INDEX not in ci_script.read_text(encoding="utf-8")


def test_compose_has_the_four_services_with_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "instance_setup", *DAGSTER_SERVICES}
    for name in ("postgres", *DAGSTER_SERVICES):
        check = services[name].get("healthcheck", {})
        assert check.get("test"), f"service {name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), f"{name}: healthcheck form"
    # The one-shot setup is judged by its exit code, and never restarted.
    assert services["instance_setup"]["restart"] == "no"

    image = services["postgres"]["image"]
    assert ":" in image and not image.endswith(":latest"), f"postgres image {image} not pinned"
    for name in ("instance_setup", *DAGSTER_SERVICES):
        build = services[name]["build"]
        assert (COMPOSE_FILE.parent / build["context"] / build["dockerfile"]).resolve() == (
            DOCKERFILE.resolve()
        )


def test_compose_services_start_in_order_of_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    postgres_healthy = {"postgres": {"condition": "service_healthy"}}
    assert services["user_code"]["depends_on"] == postgres_healthy
    assert services["instance_setup"]["depends_on"] == postgres_healthy
    for name in ("webserver", "daemon"):
        assert services[name]["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "instance_setup": {"condition": "service_completed_successfully"},
            "user_code": {"condition": "service_healthy"},
        }


def test_instance_setup_gives_the_datasets_pool_its_slot(compose: dict[str, Any]) -> None:
    command = compose["services"]["instance_setup"]["entrypoint"]
    assert command[:2] == ["sh", "-c"]
    steps = [shlex.split(step) for step in command[2].split("&&")]
    assert ["dagster", "instance", "migrate"] in steps
    assert ["dagster", "instance", "concurrency", "set", DATASETS_POOL, "1"] in steps


def test_compose_dagster_services_share_the_deployment_instance(
    compose: dict[str, Any], dockerfile: list[Instruction]
) -> None:
    services = compose["services"]
    copies = {copy_sources(i)[1]: copy_sources(i)[0] for i in dockerfile if i.keyword == "COPY"}
    for name in ("instance_setup", *DAGSTER_SERVICES):
        env = services[name]["environment"]
        home = env["DAGSTER_HOME"]
        assert copies[f"{home}/dagster.yaml"] == ["docker/dagster.yaml"]
        for variable in POSTGRES_ENV:
            assert variable in env, f"{name} does not pass {variable}"
        assert any(v.endswith(":/opt/dagster/storage") for v in services[name]["volumes"]), name

    # The webserver and the daemon reach the code server where it listens.
    workspace = yaml.safe_load(DEPLOY_WORKSPACE.read_text(encoding="utf-8"))
    server = workspace["load_from"][0]["grpc_server"]
    assert copies["/opt/dagster/deploy/workspace.yaml"] == ["docker/workspace.yaml"]
    user_code = services["user_code"]["entrypoint"]
    assert server["host"] == "user_code"
    assert str(server["port"]) == user_code[user_code.index("--port") + 1]
    assert user_code[user_code.index("--module-name") + 1] == "fdnix_assets.definitions"
    for name in ("webserver", "daemon"):
        command = services[name]["entrypoint"]
        assert command[command.index("--workspace") + 1] == "/opt/dagster/deploy/workspace.yaml"

    # The UI has no login: published on the host's loopback only.
    assert all(port.startswith("127.0.0.1:") for port in services["webserver"]["ports"])


def test_compose_passes_every_fdnix_variable_to_the_code_server(compose: dict[str, Any]) -> None:
    env = compose["services"]["user_code"]["environment"]
    settings_source = (REPO_ROOT / "fdnix_assets" / "settings.py").read_text(encoding="utf-8")
    read_by_settings = set(re.findall(r'get\(\s*"([A-Z][A-Z0-9_]+)"', settings_source))
    for variable in sorted(set(SPEC_VARIABLES) | read_by_settings | {"FDNIX_SCHEDULE_CRON"}):
        assert variable in env, f"docker-compose.yml does not pass {variable} to user_code"
        # No value: taken from the shell or .env when set, left unset otherwise, so the
        # image's defaults (OUTPUT_PATH=/out/...) and FTS_STEMMER's "unset" still apply.
        assert env[variable] is None, f"{variable} should pass through, not be fixed"
    assert any(volume.endswith(":/out") for volume in compose["services"]["user_code"]["volumes"])


def instance_config(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    home = tmp_path / path.parent.name
    home.mkdir()
    (home / "dagster.yaml").write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    for name, value in POSTGRES_ENV.items():
        monkeypatch.setenv(name, value)
    config, _ = dagster_instance_config(str(home))
    return dict(config)


def validate_configurable_classes(home: Path) -> list[str]:
    """Imports each class the instance names and checks its config against its schema."""
    ref = InstanceRef.from_dir(str(home))
    checked = []
    for data in (
        ref.storage_data,
        ref.run_coordinator_data,
        ref.run_launcher_data,
        ref.compute_logs_data,
        ref.local_artifact_storage_data,
    ):
        klass = getattr(importlib.import_module(data.module_name), data.class_name)
        result = process_config(
            resolve_to_config_type(klass.config_type()), yaml.safe_load(data.config_yaml) or {}
        )
        assert result.success, f"{data.class_name}: {[e.message for e in result.errors]}"
        checked.append(data.class_name)
    return checked


def test_deployment_instance_is_valid_dagster_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = instance_config(DEPLOY_INSTANCE, tmp_path, monkeypatch)

    assert set(config["storage"]) == {"postgres"}
    postgres = config["storage"]["postgres"]["postgres_db"]
    for field in ("hostname", "port", "username", "password", "db_name"):
        assert set(postgres[field]) == {"env"}, f"{field} is written into the file"
    # SQLAlchemy 2.1 defaults postgresql:// to psycopg 3; dagster-postgres brings psycopg2.
    assert postgres["scheme"] == "postgresql+psycopg2"
    assert config["run_monitoring"]["enabled"] is True
    assert config["run_retries"]["enabled"] is True and config["run_retries"]["max_retries"] >= 1

    checked = validate_configurable_classes(tmp_path / "docker")
    assert checked == [
        "DagsterPostgresStorage",
        "QueuedRunCoordinator",
        "DefaultRunLauncher",
        "LocalComputeLogManager",
        "LocalArtifactStorage",
    ]


@pytest.mark.parametrize(
    "instance_file", [DEPLOY_INSTANCE, LOCAL_INSTANCE], ids=["deploy", "local"]
)
def test_one_run_at_a_time_per_dataset_prefix(
    instance_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs tagged with the same prefix never run together; other prefixes do."""
    config = instance_config(instance_file, tmp_path, monkeypatch)
    limits = config["concurrency"]["runs"]["tag_concurrency_limits"]

    class Run:
        def __init__(self, prefix: str) -> None:
            self.tags = {DATASET_PREFIX_TAG: prefix}

    in_progress = [Run("s3://fdnix-artifacts/snapshots/fdnix-data.lancedb")]
    counter = TagConcurrencyLimitsCounter(limits, in_progress)
    same_prefix = Run("s3://fdnix-artifacts/snapshots/fdnix-data.lancedb")
    other_prefix = Run("s3://fdnix-artifacts/nixos-25.11/fdnix-data.lancedb")

    assert counter.is_blocked(same_prefix)
    assert not counter.is_blocked(other_prefix)


@pytest.mark.parametrize(
    "instance_file", [DEPLOY_INSTANCE, LOCAL_INSTANCE], ids=["deploy", "local"]
)
def test_dataset_writing_runs_hold_their_pool_for_the_whole_run(
    instance_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One slot per pool, held per run: runs of assets in a pool never overlap."""
    config = instance_config(instance_file, tmp_path, monkeypatch)
    assert config["concurrency"]["pools"] == {"granularity": "run", "default_limit": 1}
    # Both instances load with the guard (Dagster rejects run limits given in two places).
    InstanceRef.from_dir(str(tmp_path / instance_file.parent.name))


def test_the_main_dataset_asset_is_in_the_datasets_pool() -> None:
    from fdnix_assets.definitions import defs

    node = defs.resolve_asset_graph().get(AssetKey("nixpkgs_packages"))
    assert node.pools == {DATASETS_POOL}
