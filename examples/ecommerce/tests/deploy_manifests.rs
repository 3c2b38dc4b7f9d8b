//! The deployment files (deploy/Dockerfile, deploy/k8s/base and its
//! overlays) against what the binary really serves and reads: every probe
//! path is answered by the running system, every port is the service's
//! default port (and, with mTLS, the health port), every environment
//! variable is one `config::ENV_VARS` lists and the environment each
//! Deployment sets loads into valid `Settings` for that service. The
//! overlays are checked as kustomize would build them: their patches are
//! applied to the base here (the subset of strategic merge and JSON 6902
//! the overlays use), so the check needs no kubectl.
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
    read_dir("k8s/base")
}

/// The YAML files of a directory under deploy/ as (file name, text) pairs.
fn read_dir(relative: &str) -> BTreeMap<String, String> {
    let dir = deploy_dir().join(relative);
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("the deploy directory exists") {
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
    let resources = parse_base(files, &mut problems);
    check_resources(&resources, &mut problems);
    problems
}

/// The base's resources, its kustomization checked against its files.
fn parse_base(files: &BTreeMap<String, String>, problems: &mut Vec<String>) -> Vec<Resource> {
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
        Some(k) => check_kustomization(&k, files, problems),
    }
    resources
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

/// Checks an overlay (`k8s/overlays/<name>`) as kustomize builds it: its
/// kustomization (the base among its resources, every file listed, every
/// patch naming something that exists), then the base with the overlay's
/// patches applied, under the same rules as the base.
fn check_overlay(
    base: &BTreeMap<String, String>,
    overlay: &str,
    files: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let resources = build_overlay(base, overlay, files, &mut problems);
    check_resources(&resources, &mut problems);
    problems
}

/// The base with the overlay's resources added and its patches applied.
fn build_overlay(
    base: &BTreeMap<String, String>,
    overlay: &str,
    files: &BTreeMap<String, String>,
    problems: &mut Vec<String>,
) -> Vec<Resource> {
    let mut resources = parse_base(base, problems);
    let at = |file: &str| format!("overlays/{overlay}/{file}");
    let Some(text) = files.get("kustomization.yaml") else {
        problems.push(at("kustomization.yaml missing"));
        return resources;
    };
    let k = match parse_yaml(&at("kustomization.yaml"), text) {
        Ok(docs) if !docs.is_empty() => docs.into_iter().next().unwrap(),
        Ok(_) => {
            problems.push(at("kustomization.yaml is empty"));
            return resources;
        }
        Err(e) => {
            problems.push(e);
            return resources;
        }
    };
    let listed: Vec<&str> = array_at(&k, "/resources")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    if !listed.contains(&"../../base") {
        problems.push(at("kustomization.yaml does not build on ../../base"));
    }
    let mut used: BTreeSet<&str> = BTreeSet::new();
    for resource in listed.iter().filter(|r| !r.starts_with("..")) {
        used.insert(resource);
        let Some(text) = files.get(*resource) else {
            problems.push(format!(
                "{} lists {resource}, which does not exist",
                at("kustomization.yaml")
            ));
            continue;
        };
        match parse_yaml(&at(resource), text) {
            Err(e) => problems.push(e),
            Ok(docs) if docs.is_empty() => problems.push(format!("{} is empty", at(resource))),
            Ok(docs) => resources.extend(docs.into_iter().map(|doc| {
                Resource {
                    file: at(resource),
                    kind: str_at(&doc, "/kind").unwrap_or_default().to_owned(),
                    name: str_at(&doc, "/metadata/name")
                        .unwrap_or_default()
                        .to_owned(),
                    doc,
                }
            })),
        }
    }
    for patch in array_at(&k, "/patches") {
        if let Some(path) = str_at(patch, "/path") {
            used.insert(path);
            let Some(text) = files.get(path) else {
                problems.push(format!(
                    "{} patches with {path}, which does not exist",
                    at("kustomization.yaml")
                ));
                continue;
            };
            match parse_yaml(&at(path), text) {
                Err(e) => problems.push(e),
                Ok(docs) => {
                    for doc in docs {
                        apply_strategic_merge(&at(path), &doc, &mut resources, problems);
                    }
                }
            }
        } else if let Some(text) = str_at(patch, "/patch") {
            let file = at("kustomization.yaml");
            match parse_yaml(&file, text) {
                Err(e) => problems.push(e),
                Ok(ops) => apply_json_patch(&file, patch, &ops, &mut resources, problems),
            }
        }
    }
    for file in files.keys() {
        if file != "kustomization.yaml" && !used.contains(file.as_str()) {
            problems.push(format!("{} is not listed in kustomization.yaml", at(file)));
        }
    }
    resources
}

/// A strategic-merge patch document onto the base resource of the same
/// kind and name.
fn apply_strategic_merge(
    file: &str,
    patch: &Value,
    resources: &mut [Resource],
    problems: &mut Vec<String>,
) {
    let kind = str_at(patch, "/kind").unwrap_or_default();
    let name = str_at(patch, "/metadata/name").unwrap_or_default();
    match resources
        .iter_mut()
        .find(|r| r.kind == kind && r.name == name)
    {
        None => problems.push(format!(
            "{file} patches {kind} {name}, which the base does not have"
        )),
        Some(target) => {
            merge(&mut target.doc, patch);
            target.file = format!("{file} on {}", target.file);
        }
    }
}

/// The strategic merge of the fields these overlays patch: maps merge key
/// by key; lists of objects merge item by item on Kubernetes' merge key
/// (`mountPath` for volume mounts, `containerPort` for ports, `name` for
/// containers, env and volumes), new items are added; anything else is
/// replaced.
fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (key, value) in patch {
                match base.get_mut(key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Array(base), Value::Array(patch)) => {
            let merge_key = ["mountPath", "containerPort", "name"]
                .into_iter()
                .find(|key| !patch.is_empty() && patch.iter().all(|i| i.get(key).is_some()));
            let Some(merge_key) = merge_key else {
                base.clone_from(patch);
                return;
            };
            for item in patch {
                match base
                    .iter_mut()
                    .find(|b| b.get(merge_key) == item.get(merge_key))
                {
                    Some(existing) => merge(existing, item),
                    None => base.push(item.clone()),
                }
            }
        }
        (base, patch) => base.clone_from(patch),
    }
}

/// An inline JSON 6902 patch (`replace`, `add`, `remove`) onto every
/// resource its `target` (kind, name, labelSelector `k=v`) selects.
fn apply_json_patch(
    file: &str,
    patch: &Value,
    ops: &[Value],
    resources: &mut [Resource],
    problems: &mut Vec<String>,
) {
    let kind = str_at(patch, "/target/kind");
    let name = str_at(patch, "/target/name");
    let selector = str_at(patch, "/target/labelSelector").and_then(|s| s.split_once('='));
    let mut matched = 0;
    for r in resources.iter_mut() {
        let labels = r.doc.pointer("/metadata/labels");
        if kind.is_some_and(|k| k != r.kind)
            || name.is_some_and(|n| n != r.name)
            || selector.is_some_and(|(k, v)| {
                labels.and_then(|l| l.get(k)).and_then(Value::as_str) != Some(v)
            })
        {
            continue;
        }
        matched += 1;
        for op in ops
            .iter()
            .flat_map(|o| o.as_array().map_or(&[][..], Vec::as_slice))
        {
            let path = str_at(op, "/path").unwrap_or_default();
            let (parent, key) = path.rsplit_once('/').unwrap_or(("", path));
            let key = key.replace("~1", "/").replace("~0", "~");
            let applied = match (str_at(op, "/op"), r.doc.pointer_mut(parent)) {
                (Some("replace"), Some(Value::Object(m))) if m.contains_key(&key) => {
                    m.insert(key, op.get("value").cloned().unwrap_or_default());
                    true
                }
                (Some("add"), Some(Value::Object(m))) => {
                    m.insert(key, op.get("value").cloned().unwrap_or_default());
                    true
                }
                (Some("remove"), Some(Value::Object(m))) => m.remove(&key).is_some(),
                _ => false,
            };
            if !applied {
                problems.push(format!(
                    "{file}: patch {op} does not apply to {} {}",
                    r.kind, r.name
                ));
            }
        }
    }
    if matched == 0 {
        problems.push(format!(
            "{file}: patch target {kind:?} {name:?} {selector:?} selects nothing"
        ));
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
    check_config_keys_are_read(resources, problems);
    check_tls_secrets_are_per_service(resources, problems);
    check_network_policies(resources, problems);
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

/// Who opens connections to whom, as the code does it: the gateway proxies
/// the public routes and probes every peer's readiness
/// (src/distributed.rs); every service but the gateway fetches identity's
/// JWKS and, where it calls a peer, its service token; orders calls
/// catalog, inventory and payments; orders, shipping and analytics use NATS
/// (the outbox relay and src/bus.rs); every service but the gateway keeps
/// its tables in PostgreSQL. A new call in the code needs a line here and a
/// rule in networkpolicy.yaml, or the pods cannot talk.
const CALLS: [(&str, &[&str]); 8] = [
    (
        "gateway",
        &[
            "identity",
            "catalog",
            "inventory",
            "payments",
            "orders",
            "shipping",
            "analytics",
        ],
    ),
    ("identity", &["postgres"]),
    ("catalog", &["identity", "postgres"]),
    ("inventory", &["identity", "postgres"]),
    ("payments", &["identity", "postgres"]),
    (
        "orders",
        &[
            "identity",
            "catalog",
            "inventory",
            "payments",
            "postgres",
            "nats",
        ],
    ),
    ("shipping", &["identity", "postgres", "nats"]),
    ("analytics", &["identity", "postgres", "nats"]),
];

/// Who may reach a workload, or go out from it, by NetworkPolicy.
#[derive(Debug, Default, PartialEq)]
struct Allowed {
    /// A rule admits any peer.
    anyone: bool,
    /// Pods named by `app.kubernetes.io/name`.
    pods: BTreeSet<String>,
}

/// The peers `rules` (a policy's `ingress` or `egress`) admit; `peers` is
/// `from` or `to`. The DNS rule (kube-dns on port 53) and scrapes from the
/// `monitoring` namespace are the two admitted exceptions; any other
/// namespace selector, IP block or rule without peers admits anyone.
fn allowed_peers(rules: &[Value], peers: &str, file: &str, problems: &mut Vec<String>) -> Allowed {
    let mut allowed = Allowed::default();
    for rule in rules {
        let list = array_at(rule, &format!("/{peers}"));
        if list.is_empty() {
            allowed.anyone = true;
            continue;
        }
        for peer in list {
            let namespace = str_at(
                peer,
                "/namespaceSelector/matchLabels/kubernetes.io~1metadata.name",
            );
            let pod = str_at(peer, "/podSelector/matchLabels/app.kubernetes.io~1name");
            match (namespace, pod) {
                (None, Some(pod)) if peer.get("ipBlock").is_none() => {
                    allowed.pods.insert(pod.to_owned());
                }
                (Some("kube-system"), None)
                    if str_at(peer, "/podSelector/matchLabels/k8s-app") == Some("kube-dns")
                        && array_at(rule, "/ports")
                            .iter()
                            .all(|p| p.get("port").and_then(Value::as_u64) == Some(53))
                        && !array_at(rule, "/ports").is_empty() => {}
                (Some("monitoring"), None)
                    if peers == "from" && peer.get("podSelector").is_none() => {}
                _ => {
                    problems.push(format!(
                        "{file}: a NetworkPolicy peer {peer} admits more than one workload's pods"
                    ));
                    allowed.anyone = true;
                }
            }
        }
    }
    allowed
}

/// Default-deny for every pod, then for each workload exactly the traffic
/// of [`CALLS`]: callers in, callees (and DNS) out. The gateway alone is
/// open to anyone.
fn check_network_policies(resources: &[Resource], problems: &mut Vec<String>) {
    let policies: Vec<&Resource> = resources
        .iter()
        .filter(|r| r.kind == "NetworkPolicy")
        .collect();
    let types = |p: &Resource| -> BTreeSet<String> {
        array_at(&p.doc, "/spec/policyTypes")
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    let both: BTreeSet<String> = ["Ingress".to_owned(), "Egress".to_owned()].into();
    let default_deny = policies.iter().any(|p| {
        p.doc
            .pointer("/spec/podSelector")
            .and_then(Value::as_object)
            .is_some_and(|s| s.is_empty())
            && types(p) == both
            && array_at(&p.doc, "/spec/ingress").is_empty()
            && array_at(&p.doc, "/spec/egress").is_empty()
    });
    if !default_deny {
        problems.push(
            "NetworkPolicy: no default-deny policy (empty podSelector, Ingress and Egress, no rules)"
                .into(),
        );
    }
    let mut callers: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (caller, callees) in CALLS {
        for callee in callees {
            callers.entry(callee).or_default().insert(caller.to_owned());
        }
    }
    let workloads = CALLS
        .iter()
        .map(|(name, _)| *name)
        .chain(["postgres", "nats"]);
    for workload in workloads {
        let selecting: Vec<&&Resource> = policies
            .iter()
            .filter(|p| {
                str_at(
                    &p.doc,
                    "/spec/podSelector/matchLabels/app.kubernetes.io~1name",
                ) == Some(workload)
            })
            .collect();
        if selecting.is_empty() {
            problems.push(format!("{workload}: no NetworkPolicy selects its pods"));
            continue;
        }
        let mut inbound = Allowed::default();
        let mut outbound = Allowed::default();
        for policy in selecting {
            if types(policy) != both {
                problems.push(format!(
                    "{}: NetworkPolicy {} must list policyTypes Ingress and Egress",
                    policy.file, policy.name
                ));
            }
            let i = allowed_peers(
                array_at(&policy.doc, "/spec/ingress"),
                "from",
                &policy.file,
                problems,
            );
            inbound.anyone |= i.anyone;
            inbound.pods.extend(i.pods);
            let e = allowed_peers(
                array_at(&policy.doc, "/spec/egress"),
                "to",
                &policy.file,
                problems,
            );
            outbound.anyone |= e.anyone;
            outbound.pods.extend(e.pods);
        }
        let expected_in = Allowed {
            anyone: workload == "gateway",
            pods: if workload == "gateway" {
                BTreeSet::new()
            } else {
                callers.get(workload).cloned().unwrap_or_default()
            },
        };
        if inbound != expected_in {
            problems.push(format!(
                "{workload}: NetworkPolicy ingress admits {inbound:?}, its callers are {expected_in:?}"
            ));
        }
        let expected_out = Allowed {
            anyone: false,
            pods: CALLS
                .iter()
                .find(|(name, _)| *name == workload)
                .map(|(_, callees)| callees.iter().map(|c| (*c).to_owned()).collect())
                .unwrap_or_default(),
        };
        if outbound != expected_out {
            problems.push(format!(
                "{workload}: NetworkPolicy egress admits {outbound:?}, it calls {expected_out:?}"
            ));
        }
    }
}

/// Every `ECOMMERCE_*` key of a ConfigMap reaches some Deployment, so a
/// setting written down here is one a service really gets.
fn check_config_keys_are_read(resources: &[Resource], problems: &mut Vec<String>) {
    let containers: Vec<&Value> = resources
        .iter()
        .filter(|r| r.kind == "Deployment")
        .flat_map(|r| array_at(&r.doc, "/spec/template/spec/containers"))
        .collect();
    for config in resources.iter().filter(|r| r.kind == "ConfigMap") {
        for key in data_keys(config) {
            if !key.starts_with("ECOMMERCE_") {
                continue;
            }
            let read = containers.iter().any(|c| {
                array_at(c, "/env").iter().any(|v| {
                    str_at(v, "/valueFrom/configMapKeyRef/name") == Some(&config.name)
                        && str_at(v, "/valueFrom/configMapKeyRef/key") == Some(&key)
                }) || array_at(c, "/envFrom")
                    .iter()
                    .any(|f| str_at(f, "/configMapRef/name") == Some(&config.name))
            });
            if !read {
                problems.push(format!(
                    "{}: ConfigMap {} key {key} is read by no Deployment",
                    config.file, config.name
                ));
            }
        }
    }
}

/// Each certificate names its service (`spiffe://trellis/<service>`), so
/// no two Deployments may mount the same TLS Secret.
fn check_tls_secrets_are_per_service(resources: &[Resource], problems: &mut Vec<String>) {
    let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
    for r in resources.iter().filter(|r| r.kind == "Deployment") {
        let secrets: BTreeSet<&str> = array_at(&r.doc, "/spec/template/spec/volumes")
            .iter()
            .filter_map(|v| str_at(v, "/secret/secretName"))
            .filter(|s| s.contains("tls"))
            .collect();
        for secret in secrets {
            if let Some(other) = owners.insert(secret, &r.name) {
                problems.push(format!(
                    "{}: {} shares TLS Secret {secret} with {other}; each certificate names one service",
                    r.file, r.name
                ));
            }
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
    let loaded = Settings::load_from(None, |key| env.get(key).cloned());
    // With mTLS an internal service's API takes client certificates only:
    // the kubelet probes its plain-HTTP health port instead.
    let mtls = loaded.as_ref().is_ok_and(|s| s.tls.is_some());
    let health = match &loaded {
        Ok(settings) if mtls && service != ServiceName::Gateway => {
            Some(u64::from(settings.health_listen_addr().port()))
        }
        _ => None,
    };
    let mut ports: Vec<u64> = array_at(container, "/ports")
        .iter()
        .filter_map(|p| p.pointer("/containerPort").and_then(Value::as_u64))
        .collect();
    ports.sort_unstable();
    let expected: Vec<u64> = [Some(port), health].into_iter().flatten().collect();
    if ports != expected {
        problems.push(format!(
            "{file}: {name} container ports {ports:?}, expected {expected:?}"
        ));
    }
    if let Some(health) = health
        && resolve_port(container, Some(&Value::from("health"))) != Some(health)
    {
        problems.push(format!(
            "{file}: {name} declares no containerPort named health = {health}"
        ));
    }
    let probed = health.unwrap_or(port);
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
        if probe_port != Some(probed) {
            problems.push(format!(
                "{file}: {name} {probe} port resolves to {probe_port:?}, expected {probed}"
            ));
        }
    }
    if health.is_some()
        && str_at(
            &deployment.doc,
            "/spec/template/metadata/annotations/prometheus.io~1scrape",
        ) == Some("true")
    {
        problems.push(format!(
            "{file}: {name} scrapes /metrics over plain HTTP, but its API port takes mTLS only"
        ));
    }
    if let Ok(settings) = &loaded
        && let Some(tls) = &settings.tls
    {
        for (what, path) in [("cert", &tls.cert), ("key", &tls.key), ("ca", &tls.ca)] {
            check_secret_file(deployment, container, what, path, problems);
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
    match loaded {
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
                    let scheme = if mtls { "https" } else { "http" };
                    let expected = format!("{scheme}://{}:{}", peer.as_str(), peer.default_port());
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

/// The TLS file `path` (what ECOMMERCE_TLS_<WHAT> names) lies in a
/// read-only mount of a Secret volume that projects a key to exactly that
/// file.
fn check_secret_file(
    deployment: &Resource,
    container: &Value,
    what: &str,
    path: &Path,
    problems: &mut Vec<String>,
) {
    let (file, name) = (&deployment.file, &deployment.name);
    let path = path.to_string_lossy();
    let mount = array_at(container, "/volumeMounts").iter().find_map(|m| {
        let dir = str_at(m, "/mountPath")?.trim_end_matches('/');
        let rest = path.strip_prefix(dir)?.strip_prefix('/')?;
        Some((m, rest))
    });
    let Some((mount, rest)) = mount else {
        problems.push(format!(
            "{file}: {name}'s TLS {what} {path} is in no volume mount"
        ));
        return;
    };
    if mount.pointer("/readOnly").and_then(Value::as_bool) != Some(true) {
        problems.push(format!("{file}: {name} mounts its TLS {what} writable"));
    }
    let volume_name = str_at(mount, "/name").unwrap_or_default();
    let volume = array_at(&deployment.doc, "/spec/template/spec/volumes")
        .iter()
        .find(|v| str_at(v, "/name") == Some(volume_name));
    let Some(secret) = volume.and_then(|v| v.pointer("/secret")) else {
        problems.push(format!(
            "{file}: {name}'s TLS {what} {path} is not on a Secret volume"
        ));
        return;
    };
    let items = array_at(secret, "/items");
    let projected = if items.is_empty() {
        // Without items every key is a file of its own name.
        !rest.contains('/')
    } else {
        items
            .iter()
            .any(|i| str_at(i, "/path") == Some(rest) && str_at(i, "/key").is_some())
    };
    if !projected {
        problems.push(format!(
            "{file}: {name}'s Secret volume {volume_name} has no file {rest} for its TLS {what} {path}"
        ));
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

/// The overlays under k8s/overlays, every one of them.
const OVERLAYS: [&str; 2] = ["local", "mtls"];

#[test]
fn the_overlays_applied_to_the_base_match_the_settings_contract() {
    let base = read_base();
    let found: BTreeSet<String> = std::fs::read_dir(deploy_dir().join("k8s/overlays"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        found,
        OVERLAYS.map(String::from).into(),
        "an overlay the test does not check"
    );
    for overlay in OVERLAYS {
        let files = read_dir(&format!("k8s/overlays/{overlay}"));
        let problems = check_overlay(&base, overlay, &files);
        assert!(problems.is_empty(), "{overlay}:\n{}", problems.join("\n"));
    }
}

/// Where kubectl is installed, what `kubectl kustomize` really builds from
/// each overlay passes the same checks and agrees with the patches applied
/// here on every field the checks read: a cross-check of this file's
/// merge, which the checks above do not need.
#[test]
fn kubectl_kustomize_builds_what_the_checker_checks() {
    let version = std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output();
    if !version.is_ok_and(|o| o.status.success()) {
        println!("skipped: kubectl not installed");
        return;
    }
    let base = read_base();
    for overlay in OVERLAYS {
        let dir = deploy_dir().join("k8s/overlays").join(overlay);
        let output = std::process::Command::new("kubectl")
            .arg("kustomize")
            .arg(&dir)
            .output()
            .expect("kubectl runs");
        assert!(
            output.status.success(),
            "kubectl kustomize {overlay}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let file = format!("kubectl kustomize overlays/{overlay}");
        let built: Vec<Resource> = parse_yaml(&file, &String::from_utf8(output.stdout).unwrap())
            .unwrap()
            .into_iter()
            .map(|doc| Resource {
                file: file.clone(),
                kind: str_at(&doc, "/kind").unwrap_or_default().to_owned(),
                name: str_at(&doc, "/metadata/name")
                    .unwrap_or_default()
                    .to_owned(),
                doc,
            })
            .collect();
        let mut problems = Vec::new();
        check_resources(&built, &mut problems);
        assert!(problems.is_empty(), "{}", problems.join("\n"));

        let files = read_dir(&format!("k8s/overlays/{overlay}"));
        let mut problems = Vec::new();
        let ours = build_overlay(&base, overlay, &files, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let names = |rs: &[Resource]| -> BTreeSet<(String, String)> {
            rs.iter()
                .map(|r| (r.kind.clone(), r.name.clone()))
                .collect()
        };
        assert_eq!(names(&ours), names(&built), "{overlay}");
        // Lists compared as sets: kustomize puts added items first.
        let sorted = |c: &Value, field: &str| {
            let mut items: Vec<String> = array_at(c, field).iter().map(Value::to_string).collect();
            items.sort();
            items
        };
        for r in ours.iter().filter(|r| r.kind == "Deployment") {
            let theirs = find(&built, "Deployment", &r.name).unwrap();
            let (a, b) = (
                ecommerce_container(r).unwrap(),
                ecommerce_container(theirs).unwrap(),
            );
            for field in ["/env", "/ports", "/volumeMounts"] {
                assert_eq!(
                    sorted(a, field),
                    sorted(b, field),
                    "{overlay} {} {field}",
                    r.name
                );
            }
            for probe in ["/startupProbe", "/readinessProbe", "/livenessProbe"] {
                assert_eq!(
                    a.pointer(probe),
                    b.pointer(probe),
                    "{overlay} {} {probe}",
                    r.name
                );
            }
            let spec = "/spec/template/spec";
            assert_eq!(
                sorted(&r.doc, &format!("{spec}/volumes")),
                sorted(&theirs.doc, &format!("{spec}/volumes")),
                "{overlay} {} volumes",
                r.name
            );
            for pointer in ["/spec/template/metadata/annotations", "/spec/replicas"] {
                assert_eq!(
                    r.doc.pointer(pointer),
                    theirs.doc.pointer(pointer),
                    "{overlay} {} {pointer}",
                    r.name
                );
            }
        }
        for r in ours
            .iter()
            .filter(|r| matches!(r.kind.as_str(), "ConfigMap" | "HorizontalPodAutoscaler"))
        {
            let theirs = find(&built, &r.kind, &r.name).unwrap();
            for pointer in ["/data", "/spec"] {
                assert_eq!(
                    r.doc.pointer(pointer),
                    theirs.doc.pointer(pointer),
                    "{overlay} {} {pointer}",
                    r.name
                );
            }
        }
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
            "networkpolicy.yaml",
            "  podSelector: {}\n  policyTypes: [Ingress, Egress]",
            "  podSelector: {}\n  policyTypes: [Ingress]",
            "no default-deny policy",
        ),
        (
            // payments reachable by catalog, which never calls it
            "networkpolicy.yaml",
            "      app.kubernetes.io/name: payments\n  policyTypes: [Ingress, Egress]\n  ingress:\n    - from:\n",
            "      app.kubernetes.io/name: payments\n  policyTypes: [Ingress, Egress]\n  ingress:\n    - from:\n        - podSelector:\n            matchLabels:\n              app.kubernetes.io/name: catalog\n",
            "payments: NetworkPolicy ingress admits",
        ),
        (
            // an ingress rule without peers admits anyone
            "networkpolicy.yaml",
            "      app.kubernetes.io/name: inventory\n  policyTypes: [Ingress, Egress]\n  ingress:\n",
            "      app.kubernetes.io/name: inventory\n  policyTypes: [Ingress, Egress]\n  ingress:\n    - {}\n",
            "inventory: NetworkPolicy ingress admits",
        ),
        (
            // orders cut off from NATS: its egress no longer matches its calls
            "networkpolicy.yaml",
            "name: inventory\n        - podSelector:\n            matchLabels:\n              app.kubernetes.io/name: nats\n",
            "name: inventory\n",
            "orders: NetworkPolicy egress admits",
        ),
        (
            "networkpolicy.yaml",
            "      app.kubernetes.io/name: shipping\n  policyTypes",
            "      app.kubernetes.io/name: shipper\n  policyTypes",
            "shipping: no NetworkPolicy selects its pods",
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
        (
            "config.yaml",
            "ECOMMERCE_SYNCHRONOUS_COMMIT: \"true\"",
            "ECOMMERCE_SYNCHRONOUS_COMMIT: \"yes\"",
            "ECOMMERCE_SYNCHRONOUS_COMMIT",
        ),
        (
            "config.yaml",
            "ECOMMERCE_RESERVATION_TTL: 15m",
            "ECOMMERCE_RESERVATION_TTL: 15",
            "ECOMMERCE_RESERVATION_TTL",
        ),
        (
            "config.yaml",
            "ECOMMERCE_DRAIN: 5s",
            "ECOMMERCE_DRAIN: 5s\n  ECOMMERCE_SEED_STOCK: \"10\"",
            "key ECOMMERCE_SEED_STOCK is read by no Deployment",
        ),
    ];
    for (file, from, to, expected) in cases {
        let problems = broken(file, from, to);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{file}: {from:?} -> {to:?} should report {expected:?}, got {problems:#?}"
        );
    }

    // The overlays, each broken one way at a time.
    let overlay_cases = [
        (
            "local",
            "kustomization.yaml",
            "path: /spec/minReplicas\n        value: 1",
            "path: /spec/minReplicas\n        value: 0",
            "replica bounds",
        ),
        (
            "local",
            "kustomization.yaml",
            "path: /spec/replicas",
            "path: /spec/replica",
            "does not apply to Deployment",
        ),
        (
            "local",
            "kustomization.yaml",
            "  - ../../base\n",
            "",
            "does not build on ../../base",
        ),
        (
            "mtls",
            "inventory.yaml",
            "containerPort: 9083",
            "containerPort: 9084",
            "inventory container ports [8083, 9084], expected [8083, 9083]",
        ),
        (
            "mtls",
            "identity.yaml",
            "          startupProbe:\n            httpGet:\n              port: health\n",
            "",
            "identity startupProbe port resolves to Some(8081), expected 9081",
        ),
        (
            "mtls",
            "catalog.yaml",
            "            - name: health\n",
            "            - name: healthz\n",
            "no containerPort named health",
        ),
        (
            "mtls",
            "config.yaml",
            "https://payments:8084",
            "http://payments:8084",
            "every peer URL must be https://",
        ),
        (
            "mtls",
            "shipping.yaml",
            "            - name: ECOMMERCE_TLS_CA\n              value: /etc/ecommerce/tls/ca.crt\n",
            "",
            "ECOMMERCE_TLS_KEY and ECOMMERCE_TLS_CA together",
        ),
        (
            "mtls",
            "payments.yaml",
            "path: tls.key",
            "path: key.pem",
            "has no file tls.key for its TLS key",
        ),
        (
            "mtls",
            "orders.yaml",
            "mountPath: /etc/ecommerce/tls",
            "mountPath: /etc/tls",
            "TLS cert /etc/ecommerce/tls/tls.crt is in no volume mount",
        ),
        (
            "mtls",
            "gateway.yaml",
            "readOnly: true",
            "readOnly: false",
            "mounts its TLS cert writable",
        ),
        (
            "mtls",
            "catalog.yaml",
            "secretName: ecommerce-tls-catalog",
            "secretName: ecommerce-tls-orders",
            "shares TLS Secret ecommerce-tls-orders",
        ),
        (
            "mtls",
            "analytics.yaml",
            "prometheus.io/scrape: \"false\"",
            "prometheus.io/scrape: \"true\"",
            "analytics scrapes /metrics over plain HTTP",
        ),
        (
            "mtls",
            "orders.yaml",
            "  name: orders\nspec:",
            "  name: order\nspec:",
            "patches Deployment order, which the base does not have",
        ),
        (
            "mtls",
            "kustomization.yaml",
            "  - path: analytics.yaml\n",
            "",
            "analytics.yaml is not listed",
        ),
        (
            "mtls",
            "kustomization.yaml",
            "  - path: gateway.yaml\n",
            "  - path: gateway.yaml\n  - path: redis.yaml\n",
            "patches with redis.yaml, which does not exist",
        ),
    ];
    for (overlay, file, from, to, expected) in overlay_cases {
        let mut files = read_dir(&format!("k8s/overlays/{overlay}"));
        let text = files.get_mut(file).unwrap();
        assert!(text.contains(from), "{overlay}/{file} has no {from:?}");
        *text = text.replacen(from, to, 1);
        let problems = check_overlay(&base, overlay, &files);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{overlay}/{file}: {from:?} -> {to:?} should report {expected:?}, got {problems:#?}"
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
