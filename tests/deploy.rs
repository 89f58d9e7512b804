//! The deployment files in `deploy/`, checked the ways this machine can:
//! the Kubernetes overlays rendered by kustomize (kubectl's) and every
//! object validated strictly against the Kubernetes schemas
//! (kubernetes-validate); what schemas cannot see (no secret in the files,
//! probes on the health endpoints, RBAC rules exactly the `kubernetes`
//! provider's, pools that name real Deployments); the systemd units through
//! `systemd-analyze verify`; every command line in Compose, Kubernetes and
//! systemd parsed by the real `drover` binary; and a node joining a real
//! coordinator with its token read from a file, as the deployments do.
//! No container runtime or cluster exists here: the images are not built
//! and nothing is applied (README says so).
//!
//! The validators come from scripts/setup.sh (a venv under target/).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use drover_cli::cluster::{wait_for, Cluster};
#[path = "../coordinator/tests/support/fake_kube.rs"]
mod fake_kube;
use drover_coordinator::autoscale::config::{parse as parse_pools, ProviderKind};
use drover_coordinator::autoscale::kube::RBAC_RULES;
use drover_coordinator::autoscale::provider::WorkloadKind;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_drover");
/// The Kubernetes version the manifests are validated against: the same as
/// the API types the provider is built with (k8s-openapi's `v1_33`).
const KUBERNETES_VERSION: &str = "1.33.0";
/// The Secret objects the manifests reference; README says how to create
/// each.
const SECRETS: [&str; 3] = [
    "drover-admin-key",
    "drover-metrics-token",
    "drover-join-token",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

/// A tool of the deploy venv (scripts/setup.sh makes it).
fn tool(name: &str) -> PathBuf {
    let venv = std::env::var("DROVER_DEPLOY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("target/deploy-venv"));
    let bin = venv.join("bin").join(name);
    assert!(
        bin.exists(),
        "{} is missing: run scripts/setup.sh (it installs kubectl and kubernetes-validate)",
        bin.display()
    );
    bin
}

/// Runs `cmd`, failing with its output when it fails; returns stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// YAML documents as JSON values, read by PyYAML (the venv's).
fn yaml_docs(path: &Path) -> Vec<Value> {
    let json = run(Command::new(tool("python")).args([
        "-c",
        "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None], sys.stdout)",
    ]).arg(path));
    serde_json::from_str(&json).unwrap()
}

fn overlays() -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(deploy().join("kubernetes/overlays"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("kustomization.yaml").exists())
        .collect();
    all.sort();
    let names: Vec<String> = all
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["cpu", "gpu"], "the overlays README describes");
    all
}

/// One overlay rendered by kustomize: the file and its objects.
struct Rendered {
    name: String,
    file: PathBuf,
    objects: Vec<Value>,
}

impl Rendered {
    fn of_kind(&self, kind: &str) -> impl Iterator<Item = &Value> + '_ {
        let kind = kind.to_string();
        self.objects
            .iter()
            .filter(move |o| o["kind"] == kind.as_str())
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.of_kind(kind)
            .find(|o| o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("overlay {}: no {kind} {name}", self.name))
    }

    /// Every pod template's containers, with the workload's name.
    fn containers(&self) -> Vec<(String, &Value, &Value)> {
        let mut out = Vec::new();
        for o in &self.objects {
            let spec = &o["spec"]["template"]["spec"];
            for c in spec["containers"].as_array().into_iter().flatten() {
                out.push((
                    format!(
                        "{}/{}",
                        o["kind"].as_str().unwrap(),
                        o["metadata"]["name"].as_str().unwrap()
                    ),
                    spec,
                    c,
                ));
            }
        }
        out
    }
}

fn render(dir: &Path, out: &Path) -> Rendered {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let yaml = run(Command::new(tool("kubectl")).arg("kustomize").arg(dir));
    let file = out.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    let objects = yaml_docs(&file);
    assert!(!objects.is_empty(), "overlay {name} renders nothing");
    Rendered {
        name,
        file,
        objects,
    }
}

fn render_all() -> (tempfile::TempDir, Vec<Rendered>) {
    let dir = tempfile::tempdir().unwrap();
    let all = overlays().iter().map(|o| render(o, dir.path())).collect();
    (dir, all)
}

fn validate(file: &Path) -> std::process::Output {
    Command::new(tool("kubernetes-validate"))
        .args(["--strict", "--quiet", "-k", KUBERNETES_VERSION])
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn every_overlay_renders_and_validates_strictly_against_the_kubernetes_schemas() {
    let (dir, all) = render_all();
    for r in &all {
        let out = validate(&r.file);
        assert!(
            out.status.success(),
            "overlay {}: {}{}",
            r.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let kinds: BTreeSet<&str> = r
            .objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap())
            .collect();
        for k in [
            "StatefulSet",
            "Service",
            "Deployment",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ConfigMap",
        ] {
            assert!(kinds.contains(k), "overlay {} has no {k}", r.name);
        }
        // Everything lands in the farm's namespace.
        for o in &r.objects {
            if o["kind"] != "Namespace" {
                assert_eq!(
                    o["metadata"]["namespace"], "drover",
                    "overlay {}: {o}",
                    r.name
                );
            }
        }
    }
    // The validator is strict: the same file with one unknown field in the
    // coordinator's spec is refused, naming it.
    let r = &all[0];
    let text = std::fs::read_to_string(&r.file).unwrap();
    let broken = text.replacen(
        "  serviceName: drover-coordinator\n",
        "  serviceName: drover-coordinator\n  servicename: typo\n",
        1,
    );
    assert_ne!(broken, text);
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, broken).unwrap();
    let out = validate(&file);
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("'servicename' was unexpected"),
        "{said}"
    );
}

#[test]
fn the_coordinator_is_a_stateful_set_with_a_volume_probes_and_two_services() {
    let (_dir, all) = render_all();
    for r in &all {
        let sts = r.get("StatefulSet", "drover-coordinator");
        assert_eq!(
            sts["spec"]["replicas"], 1,
            "one coordinator owns the journal"
        );
        let claims = sts["spec"]["volumeClaimTemplates"].as_array().unwrap();
        assert_eq!(claims.len(), 1);
        let claim = &claims[0]["metadata"]["name"];
        let spec = &sts["spec"]["template"]["spec"];
        let c = &spec["containers"][0];
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let arg = |flag: &str| {
            let i = args
                .iter()
                .position(|a| *a == flag)
                .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
            args[i + 1]
        };
        // The data dir is the claim's mount.
        let data_mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| &m["name"] == claim)
            .expect("the claim is mounted");
        assert_eq!(data_mount["mountPath"], arg("--data"));
        // Probes: alive on /healthz, ready on /readyz, on the HTTP port
        // the coordinator listens on.
        let http_port = arg("--http")
            .rsplit(':')
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap();
        let port_named = |name: &str| {
            c["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("no port {name}"))
        };
        let probe_port = |p: &Value| match &p["httpGet"]["port"] {
            Value::String(name) => port_named(name)["containerPort"].as_u64().unwrap(),
            n => n.as_u64().unwrap(),
        };
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["startupProbe"]["httpGet"]["path"], "/healthz");
        for p in ["livenessProbe", "readinessProbe", "startupProbe"] {
            assert_eq!(probe_port(&c[p]), http_port, "{p}");
        }
        // One Service for HTTP over TCP, one for QUIC over UDP, both
        // reaching the coordinator's pod.
        let quic_port = arg("--quic")
            .rsplit(':')
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap();
        let pod_labels = &sts["spec"]["template"]["metadata"]["labels"];
        for (svc, proto, port) in [
            ("drover-http", "TCP", http_port),
            ("drover-quic", "UDP", quic_port),
        ] {
            let s = r.get("Service", svc);
            let sel = s["spec"]["selector"].as_object().unwrap();
            assert!(
                sel.iter().all(|(k, v)| &pod_labels[k] == v),
                "{svc} selects the coordinator"
            );
            let p = &s["spec"]["ports"][0];
            assert_eq!(p["protocol"], proto, "{svc}");
            assert_eq!(
                port_named(p["targetPort"].as_str().unwrap())["containerPort"].as_u64(),
                Some(port)
            );
            assert_eq!(
                port_named(p["targetPort"].as_str().unwrap())["protocol"],
                proto
            );
        }
        // Join tokens point nodes at the QUIC Service.
        assert_eq!(arg("--advertise-quic"), format!("drover-quic:{quic_port}"));
    }
}

/// Every string in `v`, with where it is.
fn strings<'a>(v: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
    match v {
        Value::String(s) => out.push((at, s)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| strings(x, format!("{at}[{i}]"), out)),
        Value::Object(o) => o
            .iter()
            .for_each(|(k, x)| strings(x, format!("{at}.{k}"), out)),
        _ => {}
    }
}

#[test]
fn secrets_are_only_referenced_by_name_and_no_file_holds_one() {
    let (_dir, all) = render_all();
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for r in &all {
        assert_eq!(
            r.of_kind("Secret").count(),
            0,
            "overlay {} defines a Secret",
            r.name
        );
        // Every Secret a pod uses is one of those README tells how to make.
        let mut used = BTreeSet::new();
        for o in &r.objects {
            let spec = &o["spec"]["template"]["spec"];
            for v in spec["volumes"].as_array().into_iter().flatten() {
                if let Some(name) = v["secret"]["secretName"].as_str() {
                    used.insert(name.to_string());
                }
            }
            for c in spec["containers"].as_array().into_iter().flatten() {
                for e in c["env"].as_array().into_iter().flatten() {
                    assert!(
                        e.get("value")
                            .is_none_or(|v| !v.as_str().unwrap_or("").contains("drv")),
                        "{e}"
                    );
                    if let Some(name) = e["valueFrom"]["secretKeyRef"]["name"].as_str() {
                        used.insert(name.to_string());
                    }
                }
            }
        }
        for s in &used {
            assert!(
                SECRETS.contains(&s.as_str()),
                "overlay {}: unknown Secret {s}",
                r.name
            );
            assert!(
                readme.contains(&format!("kubectl -n drover create secret generic {s} ")),
                "README does not say how to create Secret {s}"
            );
        }
        assert!(
            used.contains("drover-admin-key") && used.contains("drover-join-token"),
            "{used:?}"
        );
    }
    // No file under deploy/ holds a key, a token or a Secret object, and no
    // environment variable of Compose, the units or their examples carries
    // a secret's value.
    let mut files = Vec::new();
    let mut stack = vec![deploy()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    assert!(files.len() > 15, "{files:?}");
    for f in &files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for needle in [
            "drv_",
            drover_shared::join::JOIN_PREFIX,
            "kind: Secret",
            "BEGIN PRIVATE KEY",
            "stringData",
        ] {
            assert!(
                !text.contains(needle),
                "{} contains {needle:?}",
                f.display()
            );
        }
        for line in text.lines() {
            let l = line.trim_start().to_ascii_uppercase();
            if !l.starts_with('#')
                && (l.contains("_KEY=") || l.contains("TOKEN=") || l.contains("PASSWORD"))
            {
                panic!("{}: a secret in the environment: {line}", f.display());
            }
        }
    }
    // The Compose file's secrets are files, mounted where the commands read
    // them.
    let compose = &yaml_docs(&deploy().join("compose/compose.yaml"))[0];
    let secrets = compose["secrets"].as_object().unwrap();
    assert!(!secrets.is_empty());
    for (name, s) in secrets {
        let file = s["file"]
            .as_str()
            .unwrap_or_else(|| panic!("secret {name} is not from a file"));
        assert!(file.starts_with("./secrets/"), "{file}");
        assert_eq!(
            s.as_object().unwrap().len(),
            1,
            "secret {name}: only `file:`"
        );
    }
    let mut found = Vec::new();
    strings(compose, String::new(), &mut found);
    for (at, s) in &found {
        if let Some(name) = s.strip_prefix("/run/secrets/") {
            assert!(
                secrets.contains_key(name),
                "{at}: {s} is no declared secret"
            );
        }
    }
}

/// The Role's rules as (group, resource, verb) triples.
fn flatten_rules(role: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        assert!(
            rule.get("nonResourceURLs").is_none() && rule.get("resourceNames").is_none(),
            "{rule}"
        );
        for g in rule["apiGroups"].as_array().unwrap() {
            for res in rule["resources"].as_array().unwrap() {
                for v in rule["verbs"].as_array().unwrap() {
                    out.insert((
                        g.as_str().unwrap().into(),
                        res.as_str().unwrap().into(),
                        v.as_str().unwrap().into(),
                    ));
                }
            }
        }
    }
    out
}

#[test]
fn the_service_account_has_exactly_the_kubernetes_providers_rights() {
    let provider: BTreeSet<(String, String, String)> = RBAC_RULES
        .iter()
        .flat_map(|r| {
            r.verbs.iter().map(|v| {
                (
                    r.api_group.to_string(),
                    r.resource.to_string(),
                    v.to_string(),
                )
            })
        })
        .collect();
    let (_dir, all) = render_all();
    for r in &all {
        assert_eq!(
            r.of_kind("ClusterRole").count() + r.of_kind("ClusterRoleBinding").count(),
            0
        );
        let roles: Vec<&Value> = r.of_kind("Role").collect();
        assert_eq!(roles.len(), 1);
        assert_eq!(flatten_rules(roles[0]), provider, "overlay {}", r.name);
        // Bound to the coordinator's ServiceAccount, in its namespace.
        let sts = r.get("StatefulSet", "drover-coordinator");
        let sa = sts["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .unwrap();
        r.get("ServiceAccount", sa);
        let bindings: Vec<&Value> = r.of_kind("RoleBinding").collect();
        assert_eq!(bindings.len(), 1);
        let b = bindings[0];
        assert_eq!(b["roleRef"]["name"], roles[0]["metadata"]["name"]);
        assert_eq!(b["roleRef"]["kind"], "Role");
        assert_eq!(b["subjects"].as_array().unwrap().len(), 1);
        assert_eq!(b["subjects"][0]["kind"], "ServiceAccount");
        assert_eq!(b["subjects"][0]["name"], sa);
        assert_eq!(b["subjects"][0]["namespace"], sts["metadata"]["namespace"]);
        // Nodes get no API token at all.
        for d in r.of_kind("Deployment") {
            assert_eq!(
                d["spec"]["template"]["spec"]["automountServiceAccountToken"], false,
                "{}",
                d["metadata"]["name"]
            );
        }
    }
}

#[test]
fn each_pool_of_the_pools_file_scales_a_node_deployment_of_its_overlay() {
    let (_dir, all) = render_all();
    for r in &all {
        // The coordinator reads the generated ConfigMap at --pools.
        let sts = r.get("StatefulSet", "drover-coordinator");
        let spec = &sts["spec"]["template"]["spec"];
        let c = &spec["containers"][0];
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let pools_path = args[args.iter().position(|a| *a == "--pools").unwrap() + 1];
        let (dir, file) = pools_path.rsplit_once('/').unwrap();
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == dir)
            .expect("pools mount");
        let volume = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let cm = r.get("ConfigMap", volume["configMap"]["name"].as_str().unwrap());
        let text = cm["data"][file]
            .as_str()
            .expect("pools.toml in the ConfigMap");
        let pools = parse_pools(text).unwrap_or_else(|e| panic!("overlay {}: {e:?}", r.name));
        let deployments: Vec<&Value> = r.of_kind("Deployment").collect();
        assert_eq!(
            pools.len(),
            deployments.len(),
            "overlay {}: one Deployment per pool",
            r.name
        );
        for p in &pools {
            assert_eq!(p.provider, ProviderKind::Kubernetes);
            let k = p.kubernetes.as_ref().unwrap();
            assert_eq!(k.kind, WorkloadKind::Deployment);
            assert_eq!(k.api_url, None, "in-cluster");
            let d = r.get("Deployment", &k.name);
            assert_eq!(
                d["metadata"]["namespace"],
                k.namespace.as_str(),
                "pool {}",
                p.name
            );
            // The autoscaler owns the count: apply must not reset it.
            assert!(
                d["spec"].get("replicas").is_none(),
                "{} sets replicas",
                k.name
            );
            let pod = &d["spec"]["template"]["spec"];
            assert!(
                pod["terminationGracePeriodSeconds"].as_u64().unwrap() * 1000
                    > drover_node::agent::DEFAULT_DRAIN_TIMEOUT_MS,
                "a node has time to drain"
            );
            let c = &pod["containers"][0];
            let args: Vec<&str> = c["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect();
            let arg = |flag: &str| {
                args[args
                    .iter()
                    .position(|a| *a == flag)
                    .unwrap_or_else(|| panic!("{flag} in {args:?}"))
                    + 1]
            };
            assert_eq!(arg("--pool"), p.name);
            // Named after its pod (the downward API), so the provider finds
            // the pod of a drained node.
            assert_eq!(arg("--name"), "$(POD_NAME)");
            let env = c["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == "POD_NAME")
                .unwrap();
            assert_eq!(env["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
            // The Deployment's selector matches its pods (what the provider
            // checks before lowering the count).
            let sel = d["spec"]["selector"]["matchLabels"].as_object().unwrap();
            let labels = &d["spec"]["template"]["metadata"]["labels"];
            assert!(sel.iter().all(|(k, v)| &labels[k] == v));
            let gpus = &c["resources"]["limits"]["nvidia.com/gpu"];
            if p.gpu {
                assert_eq!(gpus, 1, "pool {} asks for a GPU", p.name);
                assert_eq!(c["resources"]["requests"]["nvidia.com/gpu"], 1);
            } else {
                assert!(gpus.is_null(), "pool {}", p.name);
            }
        }
    }
}

/// Every command line the deployment files give `drover`: (where, args).
fn command_lines() -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let (_dir, all) = render_all();
    for r in &all {
        for (at, _, c) in r.containers() {
            let args = c["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            out.push((format!("overlay {} {at}", r.name), args));
        }
    }
    let compose = &yaml_docs(&deploy().join("compose/compose.yaml"))[0];
    for (name, s) in compose["services"].as_object().unwrap() {
        let args = s["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        out.push((format!("compose {name}"), args));
    }
    for unit in ["drover-coordinator.service", "drover-node.service"] {
        let text = std::fs::read_to_string(deploy().join("systemd").join(unit)).unwrap();
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap();
        let mut words = exec.split_whitespace();
        assert_eq!(words.next(), Some("/usr/local/bin/drover"));
        let args = words
            .map(|w| {
                w.replace("${STATE_DIRECTORY}", "/var/lib/x")
                    .replace("${CREDENTIALS_DIRECTORY}", "/run/credentials/x")
            })
            .collect();
        out.push((unit.to_string(), args));
    }
    out
}

#[test]
fn every_command_line_in_the_deployment_files_is_one_drover_accepts() {
    let lines = command_lines();
    assert!(lines.len() >= 8, "{lines:?}");
    for (at, args) in lines {
        // clap reads every argument before it acts on --help, so an unknown
        // flag or a value out of range fails here as it would at start.
        let out = Command::new(BIN)
            .args(&args)
            .arg("--help")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{at}: drover {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_systemd_units_verify_and_are_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for unit in ["drover-coordinator.service", "drover-node.service"] {
        let text = std::fs::read_to_string(deploy().join("systemd").join(unit)).unwrap();
        for line in [
            "DynamicUser=yes",
            "ProtectSystem=strict",
            "Restart=on-failure",
            "KillSignal=SIGTERM",
            "NoNewPrivileges=yes",
        ] {
            assert!(text.lines().any(|l| l == line), "{unit} lacks {line}");
        }
        assert!(
            text.lines().any(|l| l.starts_with("StateDirectory=")),
            "{unit}"
        );
        assert!(
            text.lines().any(|l| l.starts_with("LoadCredential=")),
            "{unit}"
        );
        // systemd-analyze checks the program exists: the real binary
        // stands in for the installed one.
        let copy = dir.path().join(unit);
        std::fs::write(&copy, text.replace("/usr/local/bin/drover", BIN)).unwrap();
        units.push(copy);
    }
    // The node's stop timeout outlasts its drain.
    let node = std::fs::read_to_string(deploy().join("systemd/drover-node.service")).unwrap();
    let stop = node
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .unwrap();
    let minutes: u64 = stop.strip_suffix("min").unwrap().parse().unwrap();
    assert!(
        minutes * 60_000 > drover_node::agent::DEFAULT_DRAIN_TIMEOUT_MS,
        "{stop}"
    );
    // systemd warns of unknown keys and bad values on stderr and still
    // exits 0, so a clean verify prints nothing.
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--generators=no"])
        .args(&units)
        .stdin(Stdio::null())
        .output()
        .expect("systemd-analyze (scripts/setup.sh installs systemd)");
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
    // And it does catch a misspelt directive.
    let bad = dir.path().join("bad.service");
    let text = std::fs::read_to_string(&units[1])
        .unwrap()
        .replace("ProtectSystem=strict", "ProtectSystm=strict");
    std::fs::write(&bad, text).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--generators=no"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unknown key 'ProtectSystm'"));
}

#[test]
fn the_images_are_multi_stage_non_root_and_the_node_has_vulkan() {
    let text = std::fs::read_to_string(deploy().join("container/Dockerfile")).unwrap();
    let stages: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(
        stages,
        ["builder", "runtime", "coordinator", "node", "node-nvidia"]
    );
    assert!(text.contains("FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder"));
    assert!(text.contains("FROM debian:${DEBIAN_RELEASE}-slim AS runtime"));
    assert!(text.contains("ARG DEBIAN_RELEASE=bookworm"));
    assert!(text.contains("ENTRYPOINT [\"drover\"]"));
    assert!(text.contains("libvulkan1 mesa-vulkan-drivers"));
    assert!(text.contains("NVIDIA_DRIVER_CAPABILITIES=graphics,compute,video,utility"));
    // Each stage that runs drover ends as the unprivileged user.
    let last_user = text.lines().rfind(|l| l.starts_with("USER ")).unwrap();
    assert_eq!(last_user, "USER 10001:10001");
    let icd: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy().join("container/nvidia_icd.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(icd["ICD"]["library_path"], "libGLX_nvidia.so.0");
    // Compose builds exactly these targets.
    let compose = &yaml_docs(&deploy().join("compose/compose.yaml"))[0];
    let services = compose["services"].as_object().unwrap();
    assert_eq!(
        services.keys().collect::<Vec<_>>(),
        ["coordinator", "node-1", "node-2"]
    );
    for (name, s) in services {
        let target = s["build"]["target"].as_str().unwrap();
        assert!(stages.contains(&target), "{name}: {target}");
        assert_eq!(s["build"]["dockerfile"], "deploy/container/Dockerfile");
    }
}

#[test]
fn the_compose_file_follows_the_compose_specification() {
    let read = |text: &str| {
        compose_spec::Compose::options()
            .apply_merge(true)
            .from_yaml_str(text)
            .map_err(|e| e.to_string())
            .and_then(|c| c.validate_all().map(|()| c).map_err(|e| e.to_string()))
    };
    let text = std::fs::read_to_string(deploy().join("compose/compose.yaml")).unwrap();
    let compose = read(&text).unwrap();
    assert_eq!(compose.services.len(), 3);
    assert_eq!(compose.secrets.len(), 2);
    // The reader is strict: a misspelt key and an undeclared secret are
    // refused.
    let typo = text.replacen("stop_grace_period: 11m", "stop_grace_perod: 11m", 1);
    assert_ne!(typo, text);
    let err = read(&typo).unwrap_err();
    assert!(err.contains("stop_grace_perod"), "{err}");
    let undeclared = text.replacen("    - drover_join_token\n", "    - drover_join_tokn\n", 1);
    assert_ne!(undeclared, text);
    let err = read(&undeclared).unwrap_err();
    assert!(err.contains("drover_join_tokn"), "{err}");
}

/// A process killed and reaped when dropped, whatever the test did.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_node_joins_with_the_token_read_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(Path::new(BIN), &dir.path().join("farm"), &[], &[]).unwrap();
    let token = c.create_join_token(None).unwrap();
    // As Kubernetes and Compose mount it: the token and a newline.
    let file = dir.path().join("join-token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let log = std::fs::File::create(dir.path().join("file-node.log")).unwrap();
    let node = Reaped(
        Command::new(BIN)
            .args([
                "node",
                "--name",
                "file-node",
                "--pool",
                "cpu",
                "--join-file",
            ])
            .arg(&file)
            .arg("--data")
            .arg(dir.path().join("file-node"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let joined = wait_for(Duration::from_secs(60), "file-node to join", || {
        Ok(c.client().nodes().ok().and_then(|nodes| {
            nodes
                .into_iter()
                .find(|n| n.name == "file-node" && n.connected)
        }))
    });
    if let Err(e) = &joined {
        panic!(
            "{e}: {}",
            std::fs::read_to_string(dir.path().join("file-node.log")).unwrap_or_default()
        );
    }
    assert_eq!(joined.unwrap().capabilities.pool, "cpu");
    drop(node);

    // An empty file and a missing one: refused at start, the flag named.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    for (f, expect) in [
        (&empty, "the file is empty"),
        (&dir.path().join("absent"), "No such file"),
    ] {
        let out = Command::new(BIN)
            .args(["node", "--name", "bad-node", "--join-file"])
            .arg(f)
            .arg("--data")
            .arg(dir.path().join("bad-node"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("--join-file") && err.contains(expect),
            "{err}"
        );
    }
    c.stop();
}

/// The annotation's value on a pod the fake API server holds (0 when unset,
/// as Kubernetes reads it).
fn deletion_cost(api: &fake_kube::FakeApi, pod: &str) -> i64 {
    api.state.lock().unwrap().pods[pod]
        .1
        .get(drover_coordinator::autoscale::kube::POD_DELETION_COST_ANNOTATION)
        .map_or(0, |v| v.parse().unwrap())
}

#[test]
fn a_kubernetes_pool_grows_and_shrinks_a_deployment_through_the_api() {
    use fake_kube::{Fake, FakeApi, Workload};
    // The API server: a Deployment `render` at 0 replicas.
    let mut fake = Fake::default();
    fake.workloads.insert(
        "deployments/render".into(),
        Workload {
            replicas: 0,
            resource_version: 1,
            not_ready: 0,
        },
    );
    let api = FakeApi::start(fake);
    // A real coordinator whose pool is that Deployment. A target of 1 s
    // with a 0.5 s frame estimate: a 240-frame job wants more than the two
    // nodes the pool may have.
    let dir = tempfile::tempdir().unwrap();
    let pools = dir.path().join("pools.toml");
    std::fs::write(
        &pools,
        format!(
            "[[pool]]\nname = \"kube\"\nprovider = \"kubernetes\"\nmin = 0\nmax = 2\n\
             target_drain_s = 1\nscale_up_cooldown_s = 1\nidle_cooldown_s = 2\nframe_s_estimate = 0.5\n\
             [pool.kubernetes]\nnamespace = \"{}\"\nkind = \"Deployment\"\nname = \"render\"\napi_url = \"{}\"\n",
            fake_kube::NS,
            api.url
        ),
    )
    .unwrap();
    let mut c = Cluster::start(
        Path::new(BIN),
        &dir.path().join("farm"),
        &["--pools", pools.to_str().unwrap()],
        &[],
    )
    .unwrap();
    let job = c
        .client()
        .submit_json(&serde_json::json!({
            "name": "on-kubernetes",
            "frames": { "start": 1, "end": 240 },
            "fps": 24,
            "resolution": { "width": 64, "height": 64 },
            "render": { "kind": "shader", "shader": "rings" },
        }))
        .unwrap()
        .id;
    // The test plays the ReplicaSet controller: pods (real node agents
    // named after them) follow the replica count, and a scale-down removes
    // the pod with the lowest deletion cost, as Kubernetes does.
    let mut pods: Vec<String> = Vec::new();
    let mut removed: Vec<(String, i64)> = Vec::new();
    let mut most = 0;
    let mut job_done = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let desired = api.replicas("deployments/render") as usize;
        most = most.max(desired);
        while pods.len() < desired {
            let name = format!("render-5d4f7c9b8-{:05}", pods.len() + removed.len());
            let mut labels = fake_kube::pool_labels();
            labels.insert("pod-template-hash".into(), "5d4f7c9b8".into());
            api.state
                .lock()
                .unwrap()
                .pods
                .insert(name.clone(), (labels, Default::default()));
            c.add_node_with(&name, &["--pool", "kube", "--slowdown", "2"])
                .unwrap();
            pods.push(name);
        }
        while pods.len() > desired {
            let (i, cost) = pods
                .iter()
                .enumerate()
                .map(|(i, p)| (i, deletion_cost(&api, p)))
                .min_by_key(|&(_, cost)| cost)
                .unwrap();
            let name = pods.remove(i);
            api.state.lock().unwrap().pods.remove(&name);
            c.kill_node(&name).unwrap();
            removed.push((name, cost));
        }
        if !job_done {
            let j = c.client().job(job).unwrap();
            assert!(
                !j.state.is_terminal() || j.state == drover_shared::api::JobState::Done,
                "{j:?}"
            );
            job_done = j.state.is_terminal();
        }
        if job_done && desired == 0 && most > 0 {
            break;
        }
        if std::time::Instant::now() > deadline {
            let decisions: Vec<String> = c
                .client()
                .pool_decisions("kube", 100)
                .unwrap_or_default()
                .iter()
                .map(|d| {
                    format!(
                        "{} {:?} {:?} {} {} {:?}",
                        d.action, d.node, d.count, d.reason, d.outcome, d.error
                    )
                })
                .collect();
            panic!(
                "the pool did not grow for the job and shrink back to 0: {desired} replicas, {pods:?} running, {removed:?} removed; job {:?}; decisions {decisions:#?}",
                c.client().job(job).map(|j| (j.state, j.frames_done)).ok()
            );
        }
        // The controller's resync period; each pass reads fresh state.
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(most, 2, "the pool grew to its maximum for the job");
    // Every pod removed was the one the autoscaler marked, never another.
    assert_eq!(removed.len(), 2, "{removed:?}");
    for (pod, cost) in &removed {
        assert_eq!(*cost, i64::from(i32::MIN), "{pod} was removed unmarked");
    }
    // The requests: the count read first, raised, and for each removal the
    // Deployment read, the pod marked, then the count lowered by one.
    let seen: Vec<(String, String)> = api
        .seen()
        .into_iter()
        .map(|r| (r.method, r.path))
        .filter(|(m, _)| m == "PATCH")
        .collect();
    let scale = "/apis/apps/v1/namespaces/farm/deployments/render/scale".to_string();
    let pod = |p: &str| format!("/api/v1/namespaces/farm/pods/{p}");
    let patch = |p: String| ("PATCH".to_string(), p);
    // Two nodes in one step or one at a time.
    let ups = seen.iter().take_while(|s| s.1 == scale).count();
    assert!((1..=2).contains(&ups), "{seen:?}");
    // Then, per removal, the pod marked and the count lowered. Two removals
    // may land between two passes of the test's controller, which then
    // removes both marked pods in its own order: compare them as a set.
    let downs = &seen[ups..];
    assert_eq!(downs.len(), 2 * removed.len(), "{seen:?}");
    let mut marked = BTreeSet::new();
    for step in downs.chunks(2) {
        let name = step[0].1.rsplit('/').next().unwrap().to_string();
        assert_eq!(step, [patch(pod(&name)), patch(scale.clone())], "{seen:?}");
        marked.insert(name);
    }
    let gone: BTreeSet<String> = removed.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(marked, gone);
    c.stop();
}
