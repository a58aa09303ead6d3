#!/usr/bin/env python3
"""The Kubernetes manifests of deploy/k8s/, read without a cluster. Used by deploy/check-k8s.sh.

    python3 deploy/k8s/manifests.py route [FILE...]      which validator checks each manifest
    python3 deploy/k8s/manifests.py split STREAM OUTDIR  one file per document of a YAML stream
    python3 deploy/k8s/manifests.py consistency          the cross-checks below
    python3 deploy/k8s/manifests.py rules --write        regenerate monitoring/prometheusrule.yaml

`route` prints one line per manifest, `FILE<TAB>core` for the kinds Kubernetes itself serves
(kubernetes-validate checks them) or `FILE<TAB>SCHEMA` for an operator's kind, SCHEMA being the
vendored JSON Schema under schemas/ (check-jsonschema checks them). A file that is not exactly one
resource, or of a kind no vendored schema covers, is an error: nothing is skipped silently. With
no FILE, every manifest of this directory.

`consistency` checks what a schema cannot: what the pieces say about each other and about the
code. Every manifest is listed in kustomization.yaml and nothing else is; each environment
variable an orderflow container sets is one its binary reads (or one another variable of the
container refers to as $(NAME)); Secrets referred to are the ones the operators generate, with
their keys; Service, PDB, HPA, ServiceMonitor and PodMonitor selectors and ports find their pods;
the job names the alert rules select are the ones the monitors produce; the PrometheusRule holds
exactly deploy/prometheus/rules/orderflow.yml; the grace periods cover the shutdown deadlines in
the code; the PostgreSQL connections every replica may open fit max_connections; every orderflow
container runs non-root, read-only, without capabilities, with requests and limits.

ORDERFLOW_K8S_DIR points it at another copy of this directory (deploy/check-k8s.sh's negative
self-check does, with a deliberately broken copy). Exits 1 listing every problem. Needs PyYAML.
"""

import os
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent.parent
K8S = Path(os.environ.get("ORDERFLOW_K8S_DIR") or REPO / "deploy" / "k8s").resolve()
SCHEMAS = K8S / "schemas"
RULES = REPO / "deploy" / "prometheus" / "rules" / "orderflow.yml"
PROMETHEUS_RULE = K8S / "monitoring" / "prometheusrule.yaml"

def show(path):
    """`path` relative to the repository when it is inside it."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


# Groups Kubernetes itself serves (kubernetes-validate has their schemas): no dot, or *.k8s.io.
def is_core(api_version):
    group = api_version.rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


def schema_for(doc):
    """The vendored schema for an operator's kind: schemas/<kind>-<group's first label>-<version>.json."""
    group, _, version = doc["apiVersion"].rpartition("/")
    return SCHEMAS / f"{doc['kind'].lower()}-{group.split('.')[0]}-{version}.json"


def manifest_files():
    return sorted(
        p for p in K8S.rglob("*.yaml")
        if p.name != "kustomization.yaml" and SCHEMAS not in p.parents
    )


def load_one(path):
    """The single resource in `path`, or raises ValueError saying why not."""
    docs = [d for d in yaml.safe_load_all(Path(path).read_text(encoding="utf-8")) if d is not None]
    if len(docs) != 1:
        raise ValueError(f"{path}: {len(docs)} documents, expected exactly one resource")
    doc = docs[0]
    if not isinstance(doc, dict) or not all(k in doc for k in ("apiVersion", "kind", "metadata")):
        raise ValueError(f"{path}: not a Kubernetes resource (apiVersion, kind, metadata)")
    if not isinstance(doc["metadata"], dict) or not doc["metadata"].get("name"):
        raise ValueError(f"{path}: no metadata.name")
    return doc


def route(paths):
    problems = []
    for path in paths or manifest_files():
        try:
            doc = load_one(path)
        except (ValueError, yaml.YAMLError) as e:
            problems.append(str(e))
            continue
        if is_core(str(doc["apiVersion"])):
            print(f"{path}\tcore")
        elif schema_for(doc).is_file():
            print(f"{path}\t{schema_for(doc)}")
        else:
            problems.append(
                f"{path}: no vendored schema for {doc['kind']} {doc['apiVersion']} "
                f"(expected {show(schema_for(doc))}; see deploy/k8s/README.md)"
            )
    return problems


def split(stream, outdir):
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    docs = [d for d in yaml.safe_load_all(Path(stream).read_text(encoding="utf-8")) if d]
    for i, doc in enumerate(docs):
        name = f"{i:03d}-{doc.get('kind', 'unknown').lower()}-{doc.get('metadata', {}).get('name', 'unnamed')}.yaml"
        (out / name).write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    print(f"{len(docs)} documents written to {out}", file=sys.stderr)
    return []


# ---- the PrometheusRule is deploy/prometheus/rules/orderflow.yml ----------------------------------

RULE_HEADER = """\
# GENERATED from deploy/prometheus/rules/orderflow.yml by
#   python3 deploy/k8s/manifests.py rules --write
# Do not edit: change the rules file (its header explains each threshold) and regenerate;
# deploy/check-k8s.sh fails while the two differ.
#
# The alert rules of the compose stack, for prometheus-operator. They select job="orderflow-api"
# and job="orderflow-worker": the jobs api/servicemonitor.yaml and worker/podmonitor.yaml produce.
# If your Prometheus selects PrometheusRules by label, add that label here (in the generator).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: orderflow
  labels:
    app.kubernetes.io/part-of: orderflow
spec:
"""


def rules_text():
    text = RULES.read_text(encoding="utf-8")
    start = re.search(r"^groups:\s*$", text, flags=re.M)
    if not start:
        raise SystemExit(f"{RULES}: no top-level `groups:` line")
    body = text[start.start():]
    return RULE_HEADER + "".join(
        ("  " + line if line.strip() else line) for line in body.splitlines(keepends=True)
    )


def write_rules():
    PROMETHEUS_RULE.parent.mkdir(exist_ok=True)
    PROMETHEUS_RULE.write_text(rules_text(), encoding="utf-8")
    print(f"wrote {show(PROMETHEUS_RULE)}", file=sys.stderr)
    return []


# ---- consistency ------------------------------------------------------------------------------------

def read_env_names(*dirs):
    """The environment variables the binaries' options read (`env = "NAME"` in their clap structs)."""
    names = set()
    for d in dirs:
        for source in (REPO / d).rglob("*.rs"):
            names.update(re.findall(r'\benv\s*=\s*"([A-Z0-9_]+)"', source.read_text(encoding="utf-8")))
    return names


def read_duration(path, pattern, what):
    """Seconds from `Duration::from_secs(N)` matched by `pattern` (group 1) in `path`."""
    match = re.search(pattern, (REPO / path).read_text(encoding="utf-8"))
    if not match:
        raise SystemExit(
            f"{path}: could not find {what}; manifests.py reads it to check the grace periods "
            "and needs updating to the code"
        )
    return int(match.group(1))


def subset(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def consistency():
    problems = []

    def problem(msg):
        problems.append(msg)

    docs = {}
    for path in manifest_files():
        try:
            doc = load_one(path)
        except (ValueError, yaml.YAMLError) as e:
            problem(str(e))
            continue
        docs[(doc["kind"], doc["metadata"]["name"])] = doc
    get = lambda kind, name: docs.get((kind, name)) or problem(f"no {kind} {name}") or {}
    of_kind = lambda kind: [d for (k, _), d in docs.items() if k == kind]

    # kustomization.yaml lists every manifest, and only them.
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = {(K8S / r).resolve() for r in kustomization.get("resources", [])}
    present = {p.resolve() for p in manifest_files()}
    for p in sorted(present - listed):
        problem(f"kustomization.yaml does not list {os.path.relpath(p, K8S)}")
    for p in sorted(listed - present):
        problem(f"kustomization.yaml lists {os.path.relpath(p, K8S)}, which is not a manifest here")
    namespace = get("Namespace", kustomization.get("namespace", ""))
    if not namespace:
        problem("kustomization.yaml's namespace has no Namespace manifest")
    images = {i["name"] for i in kustomization.get("images", [])}

    # Names the operators give what they create.
    pg_clusters = [d["metadata"]["name"] for d in of_kind("Cluster")]
    rabbits = [d["metadata"]["name"] for d in of_kind("RabbitmqCluster")]
    generated_secrets = {f"{n}-app": {"username", "password", "host", "port", "dbname", "uri",
                                      "jdbc-uri", "pgpass", "fqdn-uri", "fqdn-jdbc-uri"}
                         for n in pg_clusters}
    generated_secrets.update({f"{n}-default-user": {"username", "password", "host", "port",
                                                    "connection_string", "provider", "type"}
                              for n in rabbits})

    # And any Secret written here (e.g. the connection strings of external services).
    for secret in of_kind("Secret"):
        generated_secrets[secret["metadata"]["name"]] = set(secret.get("data") or {}) | set(
            secret.get("stringData") or {})

    reads = {
        "orderflow-api": read_env_names("runtime/src", "api/src") | {"RUST_LOG"},
        "orderflow-worker": read_env_names("runtime/src", "worker/src") | {"RUST_LOG"},
    }
    config = get("ConfigMap", "orderflow-config")
    config_keys = set((config.get("data") or {}).keys())
    for key in sorted(config_keys - (reads["orderflow-api"] & reads["orderflow-worker"])):
        problem(f"ConfigMap orderflow-config: {key} is not read by both binaries")

    # Every orderflow workload: env, secrets, security, resources, image.
    workloads = [d for d in of_kind("Deployment") + of_kind("Job")]
    pods = {}
    for w in workloads:
        name = f"{w['kind']} {w['metadata']['name']}"
        template = w["spec"]["template"]
        pods[w["metadata"]["name"]] = template
        spec = template["spec"]
        psc = spec.get("securityContext", {})
        if not psc.get("runAsNonRoot") or psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problem(f"{name}: pod securityContext needs runAsNonRoot and seccompProfile RuntimeDefault")
        if spec.get("automountServiceAccountToken") is not False:
            problem(f"{name}: automountServiceAccountToken must be false (no Kubernetes API use)")
        for c in spec["containers"]:
            where = f"{name} container {c['name']}"
            binary = (c.get("command") or [""])[0]
            if binary not in reads:
                problem(f"{where}: command must start with orderflow-api or orderflow-worker")
                continue
            if c["image"].split(":")[0] not in images:
                problem(f"{where}: image {c['image']} is not set by kustomization.yaml images:")
            env = c.get("env", [])
            names = [e["name"] for e in env]
            referenced = set(re.findall(r"\$\(([A-Za-z0-9_]+)\)", " ".join(e.get("value", "") for e in env)))
            for n in names:
                if n not in reads[binary] and n not in referenced and not n.startswith("OTEL_"):
                    problem(f"{where}: sets {n}, which {binary} does not read")
            for n in referenced - set(names):
                problem(f"{where}: refers to $({n}), which it does not set")
            for i, n in enumerate(names):  # Kubernetes expands $(X) only from variables set earlier
                for r in re.findall(r"\$\(([A-Za-z0-9_]+)\)", env[i].get("value", "")):
                    if r in names and names.index(r) > i:
                        problem(f"{where}: {n} refers to $({r}), set only after it")
            has = set(names)
            for ef in c.get("envFrom", []):
                if "configMapRef" in ef:
                    has |= set(get("ConfigMap", ef["configMapRef"]["name"]).get("data") or {})
                elif "secretRef" in ef:
                    secret = ef["secretRef"]["name"]
                    if secret not in generated_secrets:
                        problem(f"{where}: envFrom Secret {secret} is neither generated nor written here")
                    has |= generated_secrets.get(secret, set())
            for n in sorted(has - set(names) - reads[binary]):
                problem(f"{where}: gets {n} from envFrom, which {binary} does not read")
            if "DATABASE_URL" not in has:
                problem(f"{where}: no DATABASE_URL")
            if c["command"][1:2] != ["migrate"] and "AMQP_URL" not in has:
                problem(f"{where}: no AMQP_URL")
            for e in env:
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["key"] not in generated_secrets.get(ref["name"], set()):
                    problem(f"{where}: Secret {ref['name']} key {ref['key']} is not one the operators generate")
            sc = c.get("securityContext", {})
            if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
                    and sc.get("capabilities", {}).get("drop") == ["ALL"]):
                problem(f"{where}: needs readOnlyRootFilesystem, no privilege escalation, drop ALL")
            res = c.get("resources", {})
            if not all(res.get(k, {}).get(r) for k in ("requests", "limits") for r in ("cpu", "memory")):
                problem(f"{where}: needs cpu and memory requests and limits")
            ports = {p["name"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                if isinstance(port, str) and port not in ports:
                    problem(f"{where}: {probe} port {port} is not a container port")

    def pod_of(deployment):
        return pods.get(deployment, {}).get("metadata", {}).get("labels", {})

    def container_ports(deployment):
        return {p["name"] for c in pods.get(deployment, {}).get("spec", {}).get("containers", [])
                for p in c.get("ports", [])}

    for d in of_kind("Deployment"):
        sel = d["spec"]["selector"]["matchLabels"]
        if not subset(sel, d["spec"]["template"]["metadata"]["labels"]):
            problem(f"Deployment {d['metadata']['name']}: selector does not match its pod labels")

    # The API: Service, HPA, PDB, ServiceMonitor.
    api_svc = get("Service", "orderflow-api")
    if api_svc and not subset(api_svc["spec"]["selector"], pod_of("orderflow-api")):
        problem("Service orderflow-api: selector does not match the API's pods")
    for p in api_svc.get("spec", {}).get("ports", []):
        if isinstance(p.get("targetPort"), str) and p["targetPort"] not in container_ports("orderflow-api"):
            problem(f"Service orderflow-api: targetPort {p['targetPort']} is not a container port")
    hpa = get("HorizontalPodAutoscaler", "orderflow-api")
    target = hpa.get("spec", {}).get("scaleTargetRef", {})
    if target and (target["kind"], target["name"]) not in docs:
        problem(f"HPA orderflow-api: no {target['kind']} {target['name']}")
    if "replicas" in get("Deployment", "orderflow-api").get("spec", {}):
        problem("Deployment orderflow-api sets replicas: every apply would reset the HPA's choice")
    for pdb in of_kind("PodDisruptionBudget"):
        sel = pdb["spec"]["selector"]["matchLabels"]
        matched = [n for n in pods if subset(sel, pod_of(n))]
        operator_pods = sel.get("app.kubernetes.io/name") in rabbits
        if not matched and not operator_pods:
            problem(f"PodDisruptionBudget {pdb['metadata']['name']}: selects no pods here")

    jobs = set()
    for sm in of_kind("ServiceMonitor"):
        sel = sm["spec"]["selector"]["matchLabels"]
        services = [s for s in of_kind("Service") if subset(sel, s["metadata"].get("labels", {}))]
        if sel.get("app.kubernetes.io/name") in rabbits:
            continue  # the operator's Service (labels from internal/metadata/label.go)
        if not services:
            problem(f"ServiceMonitor {sm['metadata']['name']}: selects no Service here")
        for s in services:
            jobs.add(s["metadata"]["name"] if not sm["spec"].get("jobLabel")
                     else s["metadata"]["labels"].get(sm["spec"]["jobLabel"]))
            names = {p.get("name") for p in s["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                if ep.get("port") not in names:
                    problem(f"ServiceMonitor {sm['metadata']['name']}: no port {ep.get('port')} on Service {s['metadata']['name']}")
    for pm in of_kind("PodMonitor"):
        sel = pm["spec"]["selector"]["matchLabels"]
        if sel.get("cnpg.io/cluster") in pg_clusters:
            continue  # CloudNativePG's instance pods
        matched = [n for n in pods if subset(sel, pod_of(n))]
        if not matched:
            problem(f"PodMonitor {pm['metadata']['name']}: selects no pods here")
        for n in matched:
            job = pod_of(n).get(pm["spec"].get("jobLabel", ""))
            jobs.add(job or f"{kustomization.get('namespace')}/{pm['metadata']['name']}")
            for ep in pm["spec"]["podMetricsEndpoints"]:
                if ep.get("port") not in container_ports(n):
                    problem(f"PodMonitor {pm['metadata']['name']}: no port {ep.get('port')} on {n}'s pods")
    wanted = set(re.findall(r'job="([^"]+)"', RULES.read_text(encoding="utf-8")))
    for job in sorted(wanted - jobs):
        problem(f"the alert rules select job={job!r}, which no ServiceMonitor/PodMonitor produces (got {sorted(jobs)})")

    # The PrometheusRule is the rules file.
    rule = get("PrometheusRule", "orderflow")
    source = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    if rule and rule.get("spec", {}).get("groups") != source.get("groups"):
        problem(f"{show(PROMETHEUS_RULE)} differs from {show(RULES)}: "
                "run python3 deploy/k8s/manifests.py rules --write")
    if PROMETHEUS_RULE.is_file() and PROMETHEUS_RULE.read_text(encoding="utf-8") != rules_text():
        problem(f"{show(PROMETHEUS_RULE)} is not what the generator writes: "
                "run python3 deploy/k8s/manifests.py rules --write")

    # Grace periods cover the shutdown deadlines in the code.
    worker_drain = read_duration("worker/src/startup.rs",
                                 r"const SHUTDOWN_GRACE: Duration = Duration::from_secs\((\d+)\)",
                                 "the worker's SHUTDOWN_GRACE")
    last_beat = read_duration("worker/src/startup.rs",
                              r"timeout\(Duration::from_secs\((\d+)\), last\)",
                              "the worker's last-heartbeat timeout")
    api_drain = read_duration("api/src/serve.rs",
                              r"const SHUTDOWN_GRACE: Duration = Duration::from_secs\((\d+)\)",
                              "the API's SHUTDOWN_GRACE")
    api_tasks = read_duration("api/src/startup.rs",
                              r"const TASKS_GRACE: Duration = Duration::from_secs\((\d+)\)",
                              "the API's TASKS_GRACE")
    margin = 10
    worker_pod = pods.get("orderflow-worker", {}).get("spec", {})
    need = worker_drain + last_beat + margin
    if worker_pod.get("terminationGracePeriodSeconds", 30) < need:
        problem(f"Deployment orderflow-worker: terminationGracePeriodSeconds "
                f"{worker_pod.get('terminationGracePeriodSeconds', 30)} < {worker_drain} s drain "
                f"+ {last_beat} s last heartbeat + {margin} s margin")
    api_pod = pods.get("orderflow-api", {}).get("spec", {})
    pre_stop = sum(c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
                   for c in api_pod.get("containers", []))
    need = pre_stop + api_drain + api_tasks + margin
    if api_pod.get("terminationGracePeriodSeconds", 30) < need:
        problem(f"Deployment orderflow-api: terminationGracePeriodSeconds "
                f"{api_pod.get('terminationGracePeriodSeconds', 30)} < {pre_stop} s preStop + "
                f"{api_drain} s drain + {api_tasks} s tasks + {margin} s margin")

    # PostgreSQL connections: every replica's pool fits max_connections.
    pool = int((config.get("data") or {}).get("ORDERFLOW_DB_POOL_SIZE", 16))
    api_max = hpa.get("spec", {}).get("maxReplicas", 0)
    workers = get("Deployment", "orderflow-worker").get("spec", {}).get("replicas", 1)
    # A rolling update surges one pod of each Deployment; the migration Job holds one connection.
    # A worker also keeps its lease keeper's own connections: a pool of 2 and the session that
    # holds its liveness lock (worker/src/startup.rs, worker/src/leases.rs).
    worker_extra = 3
    for c in pg_clusters:
        params = get("Cluster", c).get("spec", {}).get("postgresql", {}).get("parameters", {})
        max_conn = int(params.get("max_connections", 100))
        reserved = int(params.get("superuser_reserved_connections", 3)) + 10  # + the operator's own
        used = pool * (api_max + 1) + (pool + worker_extra) * (workers + 1) + 1
        if used > max_conn - reserved:
            problem(f"Cluster {c}: {pool} connections x ({api_max} API + 1 surging) + "
                    f"({pool} + {worker_extra}) x ({workers} workers + 1 surging) + 1 = {used} > "
                    f"max_connections {max_conn} - {reserved} reserved")
    return problems


def main(argv):
    if len(argv) >= 1 and argv[0] == "route":
        problems = route(argv[1:])
    elif len(argv) == 3 and argv[0] == "split":
        problems = split(argv[1], argv[2])
    elif argv == ["consistency"]:
        problems = consistency()
    elif argv == ["rules", "--write"]:
        problems = write_rules()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for p in problems:
        print(f"ERROR {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
