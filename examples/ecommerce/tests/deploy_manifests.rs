//! The deployment files (deploy/Dockerfile, deploy/k8s/base) against what
//! the binary really serves and reads: every probe path is answered by the
//! running system, every port is the service's default port, every
//! environment variable is one `config::ENV_VARS` lists and the environment
//! each Deployment sets loads into valid `Settings` for that service.
//!
//! The checker collects problems instead of stopping at the first, and
//! `the_checker_catches_broken_manifests` breaks the real files one way at a
//! time to prove each check can fail.

#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ecommerce::config::{ENV_VARS, ServiceName, Settings};
use serde::Deserialize;
use serde_json::Value;
use trellis_health::Group;

/// The image every ecommerce container runs (the others are NATS, PostgreSQL).
const IMAGE: &str = "trellis/ecommerce";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// One Kubernetes object and the file it came from.
#[derive(Debug, Clone)]
struct Resource {
    file: String,
    kind: String,
    name: String,
    doc: Value,
}

/// Every YAML document of `text` (a `---` separated stream).
fn parse_yaml(file: &str, text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for document in yaml_serde::Deserializer::from_str(text) {
        let value = Value::deserialize(document).map_err(|e| format!("{file}: {e}"))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn array_at<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The base directory as (file name, text) pairs, kustomization.yaml included.
fn read_base() -> BTreeMap<String, String> {
    let dir = deploy_dir().join("k8s/base");
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/k8s/base exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            files.insert(name, std::fs::read_to_string(&path).expect("readable"));
        }
    }
    files
}

/// Parses every file and checks them all; returns every problem found.
fn check_base(files: &BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut resources = Vec::new();
    let mut kustomization = None;
    for (file, text) in files {
        match parse_yaml(file, text) {
            Err(e) => problems.push(e),
            Ok(docs) if file == "kustomization.yaml" => kustomization = docs.into_iter().next(),
            Ok(docs) => {
                for doc in docs {
                    let kind = str_at(&doc, "/kind").unwrap_or_default().to_owned();
                    let name = str_at(&doc, "/metadata/name")
                        .unwrap_or_default()
                        .to_owned();
                    if kind.is_empty() || name.is_empty() {
                        problems.push(format!("{file}: a document without kind or metadata.name"));
                    }
                    resources.push(Resource {
                        file: file.clone(),
                        kind,
                        name,
                        doc,
                    });
                }
            }
        }
    }
    match kustomization {
        None => problems.push("kustomization.yaml missing or empty".into()),
        Some(k) => check_kustomization(&k, files, &mut problems),
    }
    check_resources(&resources, &mut problems);
    problems
}

/// Every listed resource exists, and every file is listed (so nothing here
/// escapes the checks or the deployment).
fn check_kustomization(k: &Value, files: &BTreeMap<String, String>, problems: &mut Vec<String>) {
    let listed: BTreeSet<&str> = array_at(k, "/resources")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for resource in &listed {
        if !files.contains_key(*resource) {
            problems.push(format!(
                "kustomization.yaml lists {resource}, which does not exist"
            ));
        }
    }
    for file in files.keys() {
        if file != "kustomization.yaml" && !listed.contains(file.as_str()) {
            problems.push(format!("{file} is not listed in kustomization.yaml"));
        }
    }
}

fn find<'a>(resources: &'a [Resource], kind: &str, name: &str) -> Option<&'a Resource> {
    resources.iter().find(|r| r.kind == kind && r.name == name)
}

/// True when every key/value of `selector` is among `labels`.
fn selects(selector: Option<&Value>, labels: Option<&Value>) -> bool {
    let (Some(Value::Object(selector)), Some(Value::Object(labels))) = (selector, labels) else {
        return false;
    };
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A ConfigMap's or Secret's value for `key` (`data` or `stringData`).
fn data_value<'a>(resource: &'a Resource, key: &str) -> Option<&'a str> {
    str_at(&resource.doc, &format!("/data/{}", key.replace('/', "~1"))).or_else(|| {
        str_at(
            &resource.doc,
            &format!("/stringData/{}", key.replace('/', "~1")),
        )
    })
}

fn data_keys(resource: &Resource) -> Vec<String> {
    ["/data", "/stringData"]
        .iter()
        .filter_map(|p| resource.doc.pointer(p).and_then(Value::as_object))
        .flat_map(|m| m.keys().cloned())
        .collect()
}

fn check_resources(resources: &[Resource], problems: &mut Vec<String>) {
    for service in ServiceName::ALL {
        let name = service.as_str();
        for kind in [
            "Deployment",
            "Service",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
        ] {
            if find(resources, kind, name).is_none() {
                problems.push(format!("{name}: no {kind}"));
            }
        }
        if let Some(deployment) = find(resources, "Deployment", name) {
            check_deployment(service, deployment, resources, problems);
        }
        if let (Some(svc), Some(deployment)) = (
            find(resources, "Service", name),
            find(resources, "Deployment", name),
        ) {
            check_service(service, svc, deployment, problems);
        }
    }
    for r in resources {
        match r.kind.as_str() {
            "Service" => {
                let matched = resources.iter().any(|w| {
                    matches!(w.kind.as_str(), "Deployment" | "StatefulSet")
                        && selects(
                            r.doc.pointer("/spec/selector"),
                            w.doc.pointer("/spec/template/metadata/labels"),
                        )
                });
                if !matched {
                    problems.push(format!(
                        "{}: Service {} selects no Deployment's or StatefulSet's pods",
                        r.file, r.name
                    ));
                }
            }
            "Deployment" | "StatefulSet" => {
                if !selects(
                    r.doc.pointer("/spec/selector/matchLabels"),
                    r.doc.pointer("/spec/template/metadata/labels"),
                ) {
                    problems.push(format!(
                        "{}: {} {}'s selector does not match its pod labels",
                        r.file, r.kind, r.name
                    ));
                }
                check_env_refs(r, resources, problems);
            }
            "HorizontalPodAutoscaler" => {
                let kind = str_at(&r.doc, "/spec/scaleTargetRef/kind").unwrap_or_default();
                let target = str_at(&r.doc, "/spec/scaleTargetRef/name").unwrap_or_default();
                if find(resources, kind, target).is_none() {
                    problems.push(format!(
                        "{}: HPA {} targets {kind} {target:?}, which does not exist",
                        r.file, r.name
                    ));
                }
                let min = r.doc.pointer("/spec/minReplicas").and_then(Value::as_u64);
                let max = r.doc.pointer("/spec/maxReplicas").and_then(Value::as_u64);
                if !matches!((min, max), (Some(min), Some(max)) if min >= 1 && min <= max) {
                    problems.push(format!(
                        "{}: HPA {} replica bounds {min:?}..{max:?}",
                        r.file, r.name
                    ));
                }
            }
            "PodDisruptionBudget" => {
                let matched = resources.iter().any(|w| {
                    w.kind == "Deployment"
                        && selects(
                            r.doc.pointer("/spec/selector/matchLabels"),
                            w.doc.pointer("/spec/template/metadata/labels"),
                        )
                });
                if !matched {
                    problems.push(format!(
                        "{}: PDB {} selects no Deployment's pods",
                        r.file, r.name
                    ));
                }
            }
            _ => {}
        }
    }
}

/// The ecommerce container of a Deployment.
fn ecommerce_container(deployment: &Resource) -> Option<&Value> {
    array_at(&deployment.doc, "/spec/template/spec/containers")
        .iter()
        .find(|c| str_at(c, "/image").is_some_and(|i| i.starts_with(IMAGE)))
}

/// The container port a probe or Service names, by name or number.
fn resolve_port(container: &Value, port: Option<&Value>) -> Option<u64> {
    let ports = array_at(container, "/ports");
    match port? {
        Value::Number(n) => {
            let n = n.as_u64()?;
            ports
                .iter()
                .any(|p| p.pointer("/containerPort").and_then(Value::as_u64) == Some(n))
                .then_some(n)
        }
        Value::String(name) => ports
            .iter()
            .find(|p| str_at(p, "/name") == Some(name))
            .and_then(|p| p.pointer("/containerPort").and_then(Value::as_u64)),
        _ => None,
    }
}

fn check_deployment(
    service: ServiceName,
    deployment: &Resource,
    resources: &[Resource],
    problems: &mut Vec<String>,
) {
    let name = service.as_str();
    let file = &deployment.file;
    let Some(container) = ecommerce_container(deployment) else {
        problems.push(format!(
            "{file}: Deployment {name} runs no {IMAGE} container"
        ));
        return;
    };
    let port = u64::from(service.default_port());
    let ports: Vec<u64> = array_at(container, "/ports")
        .iter()
        .filter_map(|p| p.pointer("/containerPort").and_then(Value::as_u64))
        .collect();
    if ports != [port] {
        problems.push(format!(
            "{file}: {name} container ports {ports:?}, expected [{port}]"
        ));
    }
    for (probe, group) in [
        ("startupProbe", Group::Startup),
        ("readinessProbe", Group::Readiness),
        ("livenessProbe", Group::Liveness),
    ] {
        let path = str_at(container, &format!("/{probe}/httpGet/path"));
        if path != Some(group.path()) {
            problems.push(format!(
                "{file}: {name} {probe} path {path:?}, the health router serves {:?}",
                group.path()
            ));
        }
        let probe_port = resolve_port(
            container,
            container.pointer(&format!("/{probe}/httpGet/port")),
        );
        if probe_port != Some(port) {
            problems.push(format!(
                "{file}: {name} {probe} port resolves to {probe_port:?}, expected {port}"
            ));
        }
    }
    for (what, pointer) in [
        ("cpu request", "/resources/requests/cpu"),
        ("memory request", "/resources/requests/memory"),
        ("cpu limit", "/resources/limits/cpu"),
        ("memory limit", "/resources/limits/memory"),
    ] {
        if container.pointer(pointer).is_none() {
            problems.push(format!("{file}: {name} has no {what}"));
        }
    }
    let non_root = |v: Option<&Value>| v.and_then(Value::as_bool);
    let pod = non_root(
        deployment
            .doc
            .pointer("/spec/template/spec/securityContext/runAsNonRoot"),
    );
    let own = non_root(container.pointer("/securityContext/runAsNonRoot"));
    if own.or(pod) != Some(true) {
        problems.push(format!("{file}: {name} does not set runAsNonRoot: true"));
    }

    // The environment as the process will see it, references resolved.
    let mut env = BTreeMap::new();
    for var in array_at(container, "/env") {
        let key = str_at(var, "/name").unwrap_or_default().to_owned();
        if !ENV_VARS.contains(&key.as_str()) {
            problems.push(format!(
                "{file}: {name} sets {key}, which config::ENV_VARS does not list"
            ));
        }
        let value = if let Some(v) = str_at(var, "/value") {
            Some(v.to_owned())
        } else {
            ["configMapKeyRef", "secretKeyRef"]
                .iter()
                .find_map(|reference| {
                    let kind = if *reference == "configMapKeyRef" {
                        "ConfigMap"
                    } else {
                        "Secret"
                    };
                    let source = str_at(var, &format!("/valueFrom/{reference}/name"))?;
                    let key = str_at(var, &format!("/valueFrom/{reference}/key"))?;
                    find(resources, kind, source)
                        .and_then(|r| data_value(r, key))
                        .map(str::to_owned)
                })
        };
        if let Some(value) = value {
            env.insert(key, value);
        }
    }
    for from in array_at(container, "/envFrom") {
        for (reference, kind) in [("configMapRef", "ConfigMap"), ("secretRef", "Secret")] {
            let Some(source) = str_at(from, &format!("/{reference}/name")) else {
                continue;
            };
            let Some(r) = find(resources, kind, source) else {
                continue;
            };
            for key in data_keys(r) {
                if !ENV_VARS.contains(&key.as_str()) {
                    problems.push(format!(
                        "{file}: {name} imports {key} from {kind} {source}, which config::ENV_VARS does not list"
                    ));
                }
                if let Some(v) = data_value(r, &key) {
                    env.entry(key).or_insert_with(|| v.to_owned());
                }
            }
        }
    }
    match env
        .get("ECOMMERCE_SERVICE")
        .map(|v| v.parse::<ServiceName>())
    {
        Some(Ok(s)) if s == service => {}
        other => problems.push(format!(
            "{file}: Deployment {name} sets ECOMMERCE_SERVICE to {other:?}, expected {name}"
        )),
    }
    match Settings::load_from(None, |key| env.get(key).cloned()) {
        Err(e) => problems.push(format!("{file}: {name}'s environment does not load: {e}")),
        Ok(settings) => {
            if settings.listen_addr().port() != service.default_port() {
                problems.push(format!(
                    "{file}: {name} listens on {}, its container port is {port}",
                    settings.listen_addr()
                ));
            }
            // Kubernetes kills the pod after the grace period: the drain
            // (readiness down before the server stops) must fit in it.
            let grace = deployment
                .doc
                .pointer("/spec/template/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_u64)
                .unwrap_or(30);
            if settings.drain.as_secs() >= grace {
                problems.push(format!(
                    "{file}: {name} drains for {:?}, longer than its {grace} s grace period",
                    settings.drain
                ));
            }
            if !settings.listen_addr().ip().is_unspecified() {
                problems.push(format!(
                    "{file}: {name} listens on {}, unreachable from outside the pod",
                    settings.listen_addr()
                ));
            }
            // Peer URLs name a Service on its port.
            for peer in ServiceName::ALL {
                let key = format!("ECOMMERCE_{}_URL", peer.as_str().to_uppercase());
                if env.contains_key(&key) {
                    let url = settings.peers.url(peer);
                    let expected = format!("http://{}:{}", peer.as_str(), peer.default_port());
                    if url != expected || find(resources, "Service", peer.as_str()).is_none() {
                        problems.push(format!(
                            "{file}: {name} reaches {peer} at {url}, expected the Service {expected}"
                        ));
                    }
                }
            }
        }
    }
}

fn check_service(
    service: ServiceName,
    svc: &Resource,
    deployment: &Resource,
    problems: &mut Vec<String>,
) {
    let name = service.as_str();
    let port = u64::from(service.default_port());
    let Some(container) = ecommerce_container(deployment) else {
        return;
    };
    let ports = array_at(&svc.doc, "/spec/ports");
    let ok = ports.iter().any(|p| {
        p.pointer("/port").and_then(Value::as_u64) == Some(port)
            && resolve_port(container, p.pointer("/targetPort").or(p.pointer("/port")))
                == Some(port)
    });
    if !ok {
        problems.push(format!(
            "{}: Service {name} does not expose port {port} onto the container's port {port}",
            svc.file
        ));
    }
}

/// configMapKeyRef / secretKeyRef of any workload name a key that exists.
fn check_env_refs(workload: &Resource, resources: &[Resource], problems: &mut Vec<String>) {
    for container in array_at(&workload.doc, "/spec/template/spec/containers") {
        for var in array_at(container, "/env") {
            for (reference, kind) in [("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")]
            {
                let Some(source) = str_at(var, &format!("/valueFrom/{reference}/name")) else {
                    continue;
                };
                let key = str_at(var, &format!("/valueFrom/{reference}/key")).unwrap_or_default();
                match find(resources, kind, source) {
                    None => problems.push(format!(
                        "{}: {} {} refers to {kind} {source}, which does not exist",
                        workload.file, workload.kind, workload.name
                    )),
                    Some(r) if data_value(r, key).is_none() => problems.push(format!(
                        "{}: {} {} refers to key {key:?} of {kind} {source}, which it does not have",
                        workload.file, workload.kind, workload.name
                    )),
                    Some(_) => {}
                }
            }
        }
    }
}

/// The runtime stage runs as a non-root user, the builder builds the
/// ecommerce package in release mode, and the image starts `ecommerce serve`.
fn check_dockerfile(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    // Join continuation lines, drop comments.
    let joined = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    let stages: Vec<&str> = joined.split("\nFROM ").skip(1).collect();
    if stages.len() < 2 {
        problems.push(format!(
            "Dockerfile: {} stage(s), expected a multi-stage build",
            stages.len()
        ));
        return problems;
    }
    let builds = stages.iter().any(|stage| {
        stage.lines().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.windows(2).any(|w| w == ["cargo", "build"])
                && words.contains(&"--release")
                && words.windows(2).any(|w| w == ["-p", "ecommerce"])
        })
    });
    if !builds {
        problems.push("Dockerfile: no `cargo build --release -p ecommerce`".into());
    }
    let last = stages[stages.len() - 1];
    let user = last
        .lines()
        .filter_map(|l| l.trim().strip_prefix("USER "))
        .next_back()
        .map(|u| u.trim().split(':').next().unwrap_or_default().to_owned());
    match user.as_deref() {
        None => problems.push("Dockerfile: the runtime stage sets no USER (runs as root)".into()),
        Some("root" | "0") => problems.push("Dockerfile: the runtime stage runs as root".into()),
        Some(u) if u.parse::<u32>().is_err() => problems.push(format!(
            "Dockerfile: USER {u} is not numeric; runAsNonRoot cannot verify a name"
        )),
        Some(_) => {}
    }
    if !last
        .lines()
        .any(|l| l.trim().starts_with("ENTRYPOINT") && l.contains("ecommerce"))
    {
        problems
            .push("Dockerfile: the runtime stage's ENTRYPOINT is not the ecommerce binary".into());
    }
    if !last
        .lines()
        .any(|l| l.trim().starts_with("CMD") && l.contains("\"serve\""))
    {
        problems.push("Dockerfile: the default CMD is not `serve`".into());
    }
    problems
}

#[test]
fn the_base_manifests_match_the_settings_contract() {
    let files = read_base();
    let problems = check_base(&files);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_dockerfile_builds_ecommerce_and_runs_as_non_root() {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).expect("deploy/Dockerfile");
    let problems = check_dockerfile(&text);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let ignore = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.dockerignore");
    let ignore = std::fs::read_to_string(ignore).expect(".dockerignore at the build context root");
    assert!(
        ignore.lines().any(|l| l.trim() == "**/target"),
        "target/ is sent to the builder"
    );
}

#[test]
fn the_overlay_refers_to_the_base() {
    let dir = deploy_dir().join("k8s/overlays/local");
    let text = std::fs::read_to_string(dir.join("kustomization.yaml")).expect("overlay");
    let k = parse_yaml("overlays/local/kustomization.yaml", &text)
        .unwrap()
        .remove(0);
    for resource in array_at(&k, "/resources").iter().filter_map(Value::as_str) {
        assert!(
            dir.join(resource).exists(),
            "overlay lists {resource}, which does not exist"
        );
        if !resource.ends_with(".yaml") {
            continue;
        }
        let docs = parse_yaml(
            resource,
            &std::fs::read_to_string(dir.join(resource)).unwrap(),
        )
        .unwrap();
        assert!(!docs.is_empty(), "{resource} is empty");
    }
}

/// Every probe path the manifests use is answered by the health router of
/// the running system (any status but 404), and a path it does not serve
/// is 404, so this check can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_paths_are_served_by_the_running_system() {
    let files = read_base();
    let mut paths = BTreeSet::new();
    for (file, text) in &files {
        for doc in parse_yaml(file, text).unwrap() {
            if str_at(&doc, "/kind") != Some("Deployment") {
                continue;
            }
            for container in array_at(&doc, "/spec/template/spec/containers") {
                for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                    if let Some(path) = str_at(container, &format!("/{probe}/httpGet/path")) {
                        paths.insert(path.to_owned());
                    }
                }
            }
            if let Some(path) = str_at(
                &doc,
                "/spec/template/metadata/annotations/prometheus.io~1path",
            ) {
                paths.insert(path.to_owned());
            }
        }
    }
    assert_eq!(paths.len(), 4, "{paths:?}");
    let (running, _dir) = support::start("deploy-probes").await;
    let api = ecommerce::ApiClient::new(running.base_url());
    for path in paths.iter().map(String::as_str).chain(["/readyz"]) {
        let response = api
            .json(http::Method::GET, path, None, None)
            .await
            .expect("request");
        let served = response.status != http::StatusCode::NOT_FOUND;
        assert_eq!(served, path != "/readyz", "{path}: {}", response.status);
    }
    running.shutdown().await.unwrap();
}

/// Each mutation of the real files is reported by the checker.
#[test]
fn the_checker_catches_broken_manifests() {
    let base = read_base();
    let broken = |file: &str, from: &str, to: &str| {
        let mut files = base.clone();
        let text = files.get_mut(file).unwrap();
        assert!(text.contains(from), "{file} has no {from:?}");
        *text = text.replacen(from, to, 1);
        check_base(&files)
    };
    let cases = [
        (
            "identity.yaml",
            "path: /ready",
            "path: /readyz",
            "readinessProbe path",
        ),
        (
            "identity.yaml",
            "path: /live\n              port: http",
            "path: /live\n              port: 9999",
            "livenessProbe port",
        ),
        (
            "catalog.yaml",
            "containerPort: 8082",
            "containerPort: 8090",
            "container ports",
        ),
        (
            "orders.yaml",
            "- name: ECOMMERCE_NATS_URL",
            "- name: ECOMMERCE_NATS",
            "ENV_VARS does not list",
        ),
        (
            "orders.yaml",
            "key: ECOMMERCE_DRAIN",
            "key: ECOMMERCE_DRAINS",
            "which it does not have",
        ),
        (
            "payments.yaml",
            "              value: payments",
            "              value: paymentz",
            "ECOMMERCE_SERVICE",
        ),
        (
            "payments.yaml",
            "              value: payments",
            "              value: orders",
            "expected payments",
        ),
        (
            "config.yaml",
            "inventory.listen: 0.0.0.0:8083",
            "inventory.listen: 0.0.0.0:9083",
            "listens on 0.0.0.0:9083",
        ),
        (
            "config.yaml",
            "http://catalog:8082",
            "http://catalog-svc:8082",
            "expected the Service",
        ),
        (
            "shipping.yaml",
            "  selector:\n    app.kubernetes.io/name: shipping",
            "  selector:\n    app.kubernetes.io/name: shipper",
            "selects no",
        ),
        (
            "analytics.yaml",
            "    kind: Deployment\n    name: analytics",
            "    kind: Deployment\n    name: analytic",
            "HPA analytics targets",
        ),
        (
            "gateway.yaml",
            "runAsNonRoot: true",
            "runAsNonRoot: false",
            "runAsNonRoot",
        ),
        (
            "gateway.yaml",
            "kind: PodDisruptionBudget",
            "kind: PodDisruptionBudgets",
            "gateway: no PodDisruptionBudget",
        ),
        (
            "kustomization.yaml",
            "  - nats.yaml\n",
            "  - nats.yaml\n  - redis.yaml\n",
            "redis.yaml, which does not exist",
        ),
        (
            "kustomization.yaml",
            "  - postgres.yaml\n",
            "",
            "postgres.yaml is not listed",
        ),
        (
            "inventory.yaml",
            "memory: 256Mi",
            "memry: 256Mi",
            "memory limit",
        ),
        (
            "config.yaml",
            "ECOMMERCE_DRAIN: 5s",
            "ECOMMERCE_DRAIN: 45s",
            "grace period",
        ),
    ];
    for (file, from, to, expected) in cases {
        let problems = broken(file, from, to);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{file}: {from:?} -> {to:?} should report {expected:?}, got {problems:#?}"
        );
    }

    let docker = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    for (from, to, expected) in [
        ("USER 65532:65532", "USER root", "runs as root"),
        ("USER 65532:65532", "", "sets no USER"),
        (
            "-p ecommerce",
            "-p trellis-auth",
            "cargo build --release -p ecommerce",
        ),
        ("CMD [\"serve\"]", "CMD [\"load\"]", "CMD is not `serve`"),
    ] {
        let problems = check_dockerfile(&docker.replacen(from, to, 1));
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "Dockerfile {from:?} -> {to:?} should report {expected:?}, got {problems:#?}"
        );
    }
    assert!(parse_yaml("x.yaml", "a: [unclosed").is_err());
}
