//! The deployment files in `deploy/` against what the binaries really serve and accept. No
//! container engine or cluster runs here, so every manifest is parsed and checked: the
//! ConfigMaps load with the BFF's own config loader (with the Deployments' env, secrets filled
//! from `secret.example.yaml`), container ports are the configured listeners, probe paths are
//! asked of a BFF started from the ConfigMap's own settings, the termination grace covers a
//! drain, every `BFF_…` variable names a real config key, the flags of every command line parse
//! with the binary's parser, and the Containerfile's `EXPOSE`, `USER`, `STOPSIGNAL` and
//! `HEALTHCHECK` agree with the rest. A mismatch fails naming the file and what differs.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use serde_norway::Value;
use shared::{
    Surface,
    config::{LoadOptions, Settings},
};

use crate::helpers::{mobile, spawn_app_with, web};

/// The repository root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every YAML document of a file.
fn yaml_docs(rel: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(&read(rel))
        .map(|d| {
            serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{rel}: not YAML: {e}"))
        })
        .collect()
}

/// The one YAML document of a manifest.
fn manifest(rel: &str) -> Value {
    let mut docs = yaml_docs(rel);
    assert_eq!(docs.len(), 1, "{rel}: one object per file");
    docs.remove(0)
}

/// The value at a dotted path (`spec.template.spec`), or a failure naming the file and the path.
fn at<'a>(v: &'a Value, path: &str, file: &str) -> &'a Value {
    let mut cur = v;
    for key in path.split('.') {
        cur = match cur.get(key) {
            Some(next) => next,
            None => panic!("{file}: no `{path}` (missing `{key}`)"),
        };
    }
    cur
}

/// The config file a ConfigMap holds under `key` (a key with a dot, so not a dotted path).
fn config_data<'a>(cm: &'a Value, key: &str, file: &str) -> &'a str {
    at(cm, "data", file)
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{file}: no data `{key}`"))
}

fn text<'a>(v: &'a Value, path: &str, file: &str) -> &'a str {
    at(v, path, file)
        .as_str()
        .unwrap_or_else(|| panic!("{file}: `{path}` is not a string"))
}

fn number(v: &Value, path: &str, file: &str) -> u64 {
    at(v, path, file)
        .as_u64()
        .unwrap_or_else(|| panic!("{file}: `{path}` is not a whole number"))
}

fn list<'a>(v: &'a Value, path: &str, file: &str) -> &'a Vec<Value> {
    at(v, path, file)
        .as_sequence()
        .unwrap_or_else(|| panic!("{file}: `{path}` is not a list"))
}

fn labels(v: &Value, path: &str, file: &str) -> BTreeMap<String, String> {
    at(v, path, file)
        .as_mapping()
        .unwrap_or_else(|| panic!("{file}: `{path}` is not a map"))
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap_or_default().to_owned(),
                v.as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// A client type: its directory under `deploy/k8s` and its binary.
struct Client {
    dir: &'static str,
    surface: Surface,
}

fn clients() -> [Client; 2] {
    [
        Client {
            dir: "web",
            surface: web(),
        },
        Client {
            dir: "mobile",
            surface: mobile(),
        },
    ]
}

/// The single container of a Deployment.
fn container<'a>(deployment: &'a Value, file: &str) -> &'a Value {
    let containers = list(deployment, "spec.template.spec.containers", file);
    assert_eq!(containers.len(), 1, "{file}: one container");
    &containers[0]
}

/// The env a container gets: literal values as written, `secretKeyRef`s resolved from the example
/// Secret (a key it lacks fails: the manifest would name a secret nobody documented).
fn container_env(c: &Value, file: &str) -> Vec<(String, String)> {
    let secret = manifest("deploy/k8s/secret.example.yaml");
    let secret_name = text(&secret, "metadata.name", "secret.example.yaml");
    let Some(env) = c.get("env") else {
        return Vec::new();
    };
    env.as_sequence()
        .unwrap_or_else(|| panic!("{file}: env is not a list"))
        .iter()
        .map(|e| {
            let name = text(e, "name", file).to_owned();
            let value = match e.get("value") {
                Some(v) => v.as_str().unwrap_or_default().to_owned(),
                None => {
                    let r = at(e, "valueFrom.secretKeyRef", file);
                    assert_eq!(
                        text(r, "name", file),
                        secret_name,
                        "{file}: {name} refers to another Secret than secret.example.yaml's"
                    );
                    let key = text(r, "key", file);
                    text(&secret, &format!("stringData.{key}"), "secret.example.yaml").to_owned()
                }
            };
            (name, value)
        })
        .collect()
}

/// Loads a TOML config the way the binary does (`--config FILE` and env), failing with the
/// loader's own message; a `BFF_…` variable the loader would ignore fails too.
fn load(surface: &Surface, toml: &str, env: &[(String, String)], what: &str) -> Settings {
    // One file per load: tests run in parallel and must not read each other's half-written file.
    static LOADS: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy-configs");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!(
        "{}-{}-{}-{}.toml",
        surface.name,
        what.replace(['/', ' ', '.'], "_"),
        std::process::id(),
        LOADS.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&file, toml).unwrap();
    let opts = LoadOptions {
        file: Some(file),
        listen: None,
        env: env.to_vec(),
    };
    let (settings, warnings) = Settings::load_reporting(&(surface.defaults)(), &opts)
        .unwrap_or_else(|e| panic!("{what} does not load as {}'s config: {e}", surface.name));
    assert!(warnings.is_empty(), "{what}: {warnings:?}");
    settings
}

/// Every `BFF_…` name in `env` is a config key the settings really have (`BFF_EVENTS__URL` →
/// `events.url`), holding the value given.
fn assert_env_names_config_keys(settings: &Settings, env: &[(String, String)], what: &str) {
    let tree = toml::Table::try_from(settings).unwrap();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("BFF_") else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let mut cur: Option<&toml::Value> = None;
        let mut table = Some(&tree);
        for p in &path {
            cur = table.and_then(|t| t.get(p));
            table = cur.and_then(toml::Value::as_table);
        }
        let key = path.join(".");
        let cur = cur.unwrap_or_else(|| panic!("{what}: {name} names no config key (`{key}`)"));
        let held = cur.as_str().map_or_else(|| cur.to_string(), str::to_owned);
        assert_eq!(&held, value, "{what}: {name} did not set `{key}`");
    }
}

/// Seconds from a plain number or a systemd time span in one unit (`30`, `30s`, `2min`).
fn seconds(raw: &str) -> f64 {
    let raw = raw.trim();
    let (number, unit) = raw
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((raw, ""), |i| raw.split_at(i));
    let n: f64 = number
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("`{raw}` is not a time span"));
    n * match unit {
        "" | "s" | "sec" => 1.0,
        "min" | "m" => 60.0,
        "ms" => 0.001,
        other => panic!("`{raw}`: unit `{other}` not understood here"),
    }
}

/// Whether the binary's parser accepts `args` (flags after the binary's name).
fn parses(surface: &Surface, args: &[String]) -> Result<(), String> {
    let argv = std::iter::once(surface.name.to_owned()).chain(args.iter().cloned());
    shared::cli::command(surface)
        .try_get_matches_from(argv)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The value a command line gives `flag` (`--config FILE`).
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// Every manifest in `deploy/k8s` is in the kustomization, every listed file exists, and each
/// client type has its ConfigMap, Deployment, Service, PodDisruptionBudget and autoscaler.
#[test]
fn the_kustomization_applies_every_manifest_and_each_client_has_its_objects() {
    let k = manifest("deploy/k8s/kustomization.yaml");
    let file = "deploy/k8s/kustomization.yaml";
    let listed: BTreeSet<String> = list(&k, "resources", file)
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let mut on_disk = BTreeSet::new();
    for dir in ["", "web/", "mobile/"] {
        for e in std::fs::read_dir(repo().join("deploy/k8s").join(dir)).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if name.ends_with(".yaml")
                && name != "kustomization.yaml"
                && name != "secret.example.yaml"
            {
                on_disk.insert(format!("{dir}{name}"));
            }
        }
    }
    assert_eq!(
        listed, on_disk,
        "{file}: resources and the manifests on disk differ"
    );
    for c in clients() {
        let kinds: BTreeMap<String, (String, String)> = listed
            .iter()
            .filter(|f| f.starts_with(&format!("{}/", c.dir)))
            .map(|f| {
                let m = manifest(&format!("deploy/k8s/{f}"));
                (
                    text(&m, "kind", f).to_owned(),
                    (text(&m, "apiVersion", f).to_owned(), f.clone()),
                )
            })
            .collect();
        let expected = [
            ("ConfigMap", "v1"),
            ("Deployment", "apps/v1"),
            ("Service", "v1"),
            ("PodDisruptionBudget", "policy/v1"),
            ("HorizontalPodAutoscaler", "autoscaling/v2"),
        ];
        for (kind, api) in expected {
            let (version, f) = kinds
                .get(kind)
                .unwrap_or_else(|| panic!("deploy/k8s/{}: no {kind}", c.dir));
            assert_eq!(version, api, "{f}: {kind} apiVersion");
        }
        assert_eq!(kinds.len(), expected.len(), "{}: {kinds:?}", c.dir);
    }
    // The images the Deployments name are the ones `images` retags.
    let retagged: BTreeSet<&str> = list(&k, "images", file)
        .iter()
        .map(|i| text(i, "name", file))
        .collect();
    for c in clients() {
        let f = format!("deploy/k8s/{}/deployment.yaml", c.dir);
        let d = manifest(&f);
        let image = text(container(&d, &f), "image", &f);
        let name = image.rsplit_once(':').map_or(image, |(n, _)| n);
        assert!(retagged.contains(name), "{f}: image {name} not in {file}");
    }
}

/// What one client's manifests say, checked against its config and its binary.
struct Checked {
    settings: Settings,
    /// Container port by name.
    ports: BTreeMap<String, u16>,
    /// `(probe, port, path)` of every probe, and Prometheus' scrape target.
    probes: Vec<(String, u16, String)>,
}

/// Checks one client's Deployment, ConfigMap, Service, PDB and autoscaler against each other and
/// the loader, returning the settings and the probes to ask of a running BFF.
fn check_client(c: &Client) -> Checked {
    let dfile = format!("deploy/k8s/{}/deployment.yaml", c.dir);
    let d = manifest(&dfile);
    let pod = at(&d, "spec.template.spec", &dfile);
    let ctr = container(&d, &dfile);

    // The ConfigMap is what `--config` reads: mounted where the flag points, by name.
    let cfile = format!("deploy/k8s/{}/configmap.yaml", c.dir);
    let cm = manifest(&cfile);
    let cm_name = text(&cm, "metadata.name", &cfile);
    let args: Vec<String> = list(ctr, "args", &dfile)
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    parses(&c.surface, &args).unwrap_or_else(|e| panic!("{dfile}: args {args:?}: {e}"));
    let config_path =
        flag_value(&args, "--config").unwrap_or_else(|| panic!("{dfile}: no --config in args"));
    let volume = list(pod, "volumes", &dfile)
        .iter()
        .find(|v| v.get("configMap").is_some())
        .unwrap_or_else(|| panic!("{dfile}: no ConfigMap volume"));
    assert_eq!(
        text(volume, "configMap.name", &dfile),
        cm_name,
        "{dfile}: the config volume is not {cfile}'s ConfigMap"
    );
    let vname = text(volume, "name", &dfile);
    let mounts = list(ctr, "volumeMounts", &dfile);
    let mount = mounts
        .iter()
        .find(|m| text(m, "name", &dfile) == vname)
        .unwrap_or_else(|| panic!("{dfile}: the config volume is not mounted"));
    assert!(
        mount.get("subPath").is_none(),
        "{dfile}: a subPath mount never sees an edited ConfigMap"
    );
    let (dir, key) = config_path.rsplit_once('/').unwrap();
    assert_eq!(
        text(mount, "mountPath", &dfile),
        dir,
        "{dfile}: --config {config_path} is not where the ConfigMap is mounted"
    );
    let toml = config_data(&cm, key, &cfile);

    // It loads with the real loader and the container's env; every BFF_ name is a real key.
    let env = container_env(ctr, &dfile);
    assert!(
        env.iter().any(|(n, _)| n.starts_with("BFF_")),
        "{dfile}: no BFF_ env"
    );
    let settings = load(&c.surface, toml, &env, &cfile);
    assert_env_names_config_keys(&settings, &env, &dfile);

    // Container ports are the configured listeners.
    let ports: BTreeMap<String, u16> = list(ctr, "ports", &dfile)
        .iter()
        .map(|p| {
            (
                text(p, "name", &dfile).to_owned(),
                u16::try_from(number(p, "containerPort", &dfile)).unwrap(),
            )
        })
        .collect();
    let admin = settings
        .admin
        .listen
        .unwrap_or_else(|| panic!("{cfile}: no admin.listen (liveness and metrics need it)"));
    assert_eq!(
        ports.get("http").copied(),
        Some(settings.listen.port()),
        "{dfile}: containerPort `http` is not {cfile}'s listen port"
    );
    assert_eq!(
        ports.get("admin").copied(),
        Some(admin.port()),
        "{dfile}: containerPort `admin` is not {cfile}'s admin.listen port"
    );
    assert_eq!(ports.len(), 2, "{dfile}: {ports:?}");
    assert!(
        settings.listen.ip().is_unspecified() && admin.ip().is_unspecified(),
        "{cfile}: a pod's listeners must take connections from outside the pod"
    );
    assert!(!settings.tls.enabled(), "{cfile}: probes here speak HTTP");

    // Probes and the scrape target, by number.
    let port_of = |raw: &Value, what: &str| -> u16 {
        match raw {
            Value::String(name) => *ports
                .get(name)
                .unwrap_or_else(|| panic!("{dfile}: {what} names no container port `{name}`")),
            other => u16::try_from(other.as_u64().unwrap()).unwrap(),
        }
    };
    let mut probes = Vec::new();
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        let Some(p) = ctr.get(probe) else {
            assert_ne!(probe, "readinessProbe", "{dfile}: no readiness probe");
            assert_ne!(probe, "livenessProbe", "{dfile}: no liveness probe");
            continue;
        };
        let port = port_of(at(p, "httpGet.port", &dfile), probe);
        let path = text(p, "httpGet.path", &dfile).to_owned();
        probes.push((probe.to_owned(), port, path));
    }
    let readiness = &probes[0];
    assert_eq!(readiness.2, "/readyz", "{dfile}: readiness path");
    assert_eq!(probes[1].2, "/healthz", "{dfile}: liveness path");
    let annotations = labels(&d, "spec.template.metadata.annotations", &dfile);
    let scrape_port: u16 = annotations["prometheus.io/port"].parse().unwrap();
    assert_eq!(
        scrape_port,
        admin.port(),
        "{dfile}: Prometheus scrapes another port than admin.listen's"
    );
    probes.push((
        "prometheus".into(),
        scrape_port,
        annotations["prometheus.io/path"].clone(),
    ));

    // Grace: the preStop sleep, the readiness delay and the drain all end before SIGKILL.
    let grace = number(pod, "terminationGracePeriodSeconds", &dfile) as f64;
    let pre_stop = match ctr.get("lifecycle").and_then(|l| l.get("preStop")) {
        Some(p) => match p.get("sleep") {
            Some(s) => number(s, "seconds", &dfile) as f64,
            None => {
                let cmd = list(p, "exec.command", &dfile);
                let secs = cmd.last().and_then(Value::as_str).unwrap_or_default();
                seconds(secs)
            }
        },
        None => panic!("{dfile}: no lifecycle.preStop"),
    };
    let drain = settings.server.shutdown_delay + settings.server.shutdown_grace;
    assert!(
        grace > pre_stop + drain.as_secs_f64(),
        "{dfile}: terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop}s + \
         server.shutdown_delay + server.shutdown_grace ({}s)",
        drain.as_secs_f64()
    );

    // A read-only root, so the spool needs a writable volume that is not the config's.
    let sc = at(ctr, "securityContext", &dfile);
    assert_eq!(sc.get("readOnlyRootFilesystem"), Some(&Value::Bool(true)));
    assert_eq!(
        sc.get("allowPrivilegeEscalation"),
        Some(&Value::Bool(false))
    );
    assert_eq!(
        at(pod, "securityContext.runAsNonRoot", &dfile),
        &Value::Bool(true)
    );
    let spool = settings
        .events
        .spool_dir
        .as_ref()
        .unwrap_or_else(|| panic!("{cfile}: no events.spool_dir"));
    let writable = mounts.iter().any(|m| {
        m.get("readOnly") != Some(&Value::Bool(true))
            && spool.starts_with(text(m, "mountPath", &dfile))
    });
    assert!(
        writable,
        "{dfile}: events.spool_dir {} is on no writable volume",
        spool.display()
    );
    assert!(
        text(ctr, "resources.requests.memory", &dfile).ends_with("Mi")
            && !text(ctr, "resources.limits.memory", &dfile).is_empty(),
        "{dfile}: memory request and limit"
    );

    // The Service, the PDB and the autoscaler select these pods.
    let pod_labels = labels(&d, "spec.template.metadata.labels", &dfile);
    let selector = labels(&d, "spec.selector.matchLabels", &dfile);
    assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
    let sfile = format!("deploy/k8s/{}/service.yaml", c.dir);
    let svc = manifest(&sfile);
    let svc_selector = labels(&svc, "spec.selector", &sfile);
    assert!(
        svc_selector
            .iter()
            .all(|(k, v)| pod_labels.get(k) == Some(v)),
        "{sfile}: selects no pod of {dfile}"
    );
    for p in list(&svc, "spec.ports", &sfile) {
        let target = port_of(at(p, "targetPort", &sfile), "the Service");
        assert_eq!(
            target,
            settings.listen.port(),
            "{sfile}: the Service must reach the public listener only"
        );
    }
    let pfile = format!("deploy/k8s/{}/pdb.yaml", c.dir);
    let pdb = manifest(&pfile);
    assert_eq!(
        labels(&pdb, "spec.selector.matchLabels", &pfile),
        selector,
        "{pfile}: selector"
    );
    let hfile = format!("deploy/k8s/{}/hpa.yaml", c.dir);
    let hpa = manifest(&hfile);
    assert_eq!(
        text(&hpa, "spec.scaleTargetRef.name", &hfile),
        text(&d, "metadata.name", &dfile)
    );
    assert_eq!(text(&hpa, "spec.scaleTargetRef.kind", &hfile), "Deployment");
    assert!(
        number(&hpa, "spec.minReplicas", &hfile) >= 2,
        "{hfile}: one pod cannot drain while another serves"
    );
    assert!(
        d.get("spec").and_then(|s| s.get("replicas")).is_none(),
        "{dfile}: `replicas` would fight {hfile} on every apply"
    );
    Checked {
        settings,
        ports,
        probes,
    }
}

/// Each Deployment agrees with its ConfigMap, Service, PDB and autoscaler, and its probes and
/// scrape target answer — not 404 — on a BFF started from the ConfigMap's own settings (its
/// backends, broker and identity provider replaced by local ones, its listeners on free ports).
#[tokio::test]
async fn each_deployment_matches_its_config_and_its_probes_are_served() {
    for c in clients() {
        let checked = check_client(&c);
        let loaded = checked.settings.clone();
        let app = spawn_app_with(c.surface, move |s| {
            let backends = s.backends.clone();
            let auth = s.auth.clone();
            *s = loaded;
            s.backends = backends;
            s.auth = auth;
            s.listen = "127.0.0.1:0".parse().unwrap();
            s.admin.listen = Some("127.0.0.1:0".parse().unwrap());
            s.events.url = None;
            s.events.spool_dir = None;
            s.rate_limits.store = "local".into();
        })
        .await;
        let listen_port = checked.settings.listen.port();
        let admin_port = checked.settings.admin.listen.unwrap().port();
        for (probe, port, path) in &checked.probes {
            let base = if *port == listen_port {
                app.url("")
            } else if *port == admin_port {
                app.admin_url("")
            } else {
                panic!(
                    "{}: {probe} asks port {port}, neither listen ({listen_port}) nor admin ({admin_port}); ports {:?}",
                    c.dir, checked.ports
                )
            };
            let resp = app.http.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(
                resp.status(),
                200,
                "{}: {probe} GET {path} on port {port}: {}",
                c.dir,
                resp.text().await.unwrap_or_default()
            );
        }
    }
}

/// The Containerfile's instructions, continuation lines joined: `(INSTRUCTION, arguments)`.
fn containerfile() -> Vec<(String, String)> {
    let text = read("deploy/Containerfile");
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && cur.is_empty()) {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
            continue;
        }
        cur.push_str(line);
        let (op, rest) = cur.split_once(char::is_whitespace).unwrap_or((&cur, ""));
        out.push((op.to_ascii_uppercase(), rest.trim().to_owned()));
        cur.clear();
    }
    out
}

/// The exec-form (JSON array) arguments of an instruction.
fn exec_form(raw: &str, what: &str) -> Vec<String> {
    serde_json::from_str(raw).unwrap_or_else(|e| panic!("Containerfile {what}: not exec form: {e}"))
}

/// The Containerfile builds both binaries in release without the demo, runs non-root on its own
/// default config, exposes exactly that config's ports, stops with the signal the binary drains
/// on, and its HEALTHCHECK is a command line the binary accepts and that works against a running
/// BFF configured by that file.
#[tokio::test]
async fn the_containerfile_matches_its_config_the_cli_and_the_deployments() {
    let ins = containerfile();
    let all = |op: &str| -> Vec<String> {
        ins.iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.clone())
            .collect()
    };
    let one = |op: &str| -> String {
        let found = all(op);
        assert_eq!(found.len(), 1, "Containerfile: one {op}, got {found:?}");
        found[0].clone()
    };
    assert!(all("FROM").len() >= 2, "Containerfile: multi-stage");
    assert!(
        all("ARG").iter().any(|a| a == "BIN=bff-web"),
        "Containerfile: ARG BIN=bff-web"
    );
    let build = all("RUN").concat();
    for needed in [
        "cargo build",
        "--release",
        "--locked",
        "-p bff-web",
        "-p bff-mobile",
        "--no-default-features",
        "target/release/${BIN}",
    ] {
        assert!(
            build.contains(needed),
            "Containerfile: the build lacks `{needed}`"
        );
    }

    // Where the binary and the default config land.
    let copies = all("COPY");
    let dest = |src: &str| -> String {
        let c = copies
            .iter()
            .find(|c| c.split_whitespace().any(|w| w == src))
            .unwrap_or_else(|| panic!("Containerfile: no COPY of {src}"));
        c.split_whitespace().last().unwrap().to_owned()
    };
    let binary = dest("/out/bff");
    let config_path = dest("deploy/bff.toml");

    // Non-root, by number, the user the Deployments run as.
    let user = one("USER");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("Containerfile: USER {user} is not numeric"));
    assert_ne!(uid, 0, "Containerfile: USER must not be root");
    assert_eq!(one("STOPSIGNAL"), "SIGTERM", "the binary drains on SIGTERM");

    // EXPOSE: the default config's listeners, which are the Deployments' container ports.
    let image_config = read("deploy/bff.toml");
    let mut exposed: Vec<u16> = one("EXPOSE")
        .split_whitespace()
        .map(|p| p.trim_end_matches("/tcp").parse().unwrap())
        .collect();
    exposed.sort_unstable();
    for c in clients() {
        let s = load(&c.surface, &image_config, &[], "deploy/bff.toml");
        let mut ports = vec![s.listen.port(), s.admin.listen.unwrap().port()];
        ports.sort_unstable();
        assert_eq!(
            exposed, ports,
            "Containerfile: EXPOSE is not deploy/bff.toml's listen and admin ports"
        );
        let dfile = format!("deploy/k8s/{}/deployment.yaml", c.dir);
        let d = manifest(&dfile);
        let mut container_ports: Vec<u16> = list(container(&d, &dfile), "ports", &dfile)
            .iter()
            .map(|p| u16::try_from(number(p, "containerPort", &dfile)).unwrap())
            .collect();
        container_ports.sort_unstable();
        assert_eq!(
            container_ports, exposed,
            "{dfile}: ports differ from EXPOSE"
        );
        assert_eq!(
            u64::from(uid),
            number(&d, "spec.template.spec.securityContext.runAsUser", &dfile),
            "{dfile}: runAsUser is not the image's USER"
        );
    }

    // ENTRYPOINT + CMD and the HEALTHCHECK are command lines of the binary.
    let entry = exec_form(&one("ENTRYPOINT"), "ENTRYPOINT");
    assert_eq!(
        entry,
        std::slice::from_ref(&binary),
        "ENTRYPOINT runs the copied binary"
    );
    let cmd = exec_form(&one("CMD"), "CMD");
    let health = one("HEALTHCHECK");
    let (options, check) = health
        .split_once("CMD ")
        .unwrap_or_else(|| panic!("Containerfile: HEALTHCHECK without CMD"));
    assert!(options.contains("--timeout="), "HEALTHCHECK --timeout");
    let check = exec_form(check, "HEALTHCHECK CMD");
    assert_eq!(check[0], binary, "HEALTHCHECK runs the copied binary");
    let check_args = check[1..].to_vec();
    for c in clients() {
        parses(&c.surface, &cmd).unwrap_or_else(|e| panic!("CMD {cmd:?}: {e}"));
        parses(&c.surface, &check_args).unwrap_or_else(|e| panic!("HEALTHCHECK {check:?}: {e}"));
    }
    assert!(check_args.iter().any(|a| a == "--healthcheck"));
    assert_eq!(flag_value(&cmd, "--config"), Some(config_path.as_str()));
    assert_eq!(
        flag_value(&check_args, "--config"),
        Some(config_path.as_str()),
        "the health check must read the config the instance runs with"
    );

    // The check works: against a BFF on that config (its ports moved to free ones) it passes,
    // and with nothing listening it fails.
    let image = load(&web(), &image_config, &[], "deploy/bff.toml");
    let loaded = image.clone();
    let app = spawn_app_with(web(), move |s| {
        let backends = s.backends.clone();
        *s = loaded;
        s.backends = backends;
        s.listen = "127.0.0.1:0".parse().unwrap();
        s.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let mut probed = image.clone();
    probed.listen = app.addr;
    probed.admin.listen = app.admin;
    let url = shared::server::probe::healthcheck(&probed)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(url, format!("http://{}/healthz", app.admin.unwrap()));
    // The public listener answers it too, when there is no admin listener.
    probed.admin.listen = None;
    shared::server::probe::healthcheck(&probed).await.unwrap();
    drop(app);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probed.listen = closed.local_addr().unwrap();
    drop(closed);
    let err = shared::server::probe::healthcheck(&probed)
        .await
        .expect_err("nothing listens there");
    assert!(err.to_string().contains("/healthz"), "{err}");
}

/// `bff@.service`: the binary of each instance exists, its ExecStart flags parse with that
/// binary's parser, it stops with SIGTERM and waits longer than any shipped config's drain, its
/// `BFF_…` variables are real config keys, and the spool lives in its state directory.
#[test]
fn the_systemd_unit_matches_the_cli_and_the_shutdown_grace() {
    let unit = read("deploy/systemd/bff@.service");
    let mut service: Vec<(String, String)> = Vec::new();
    let mut section = String::new();
    for line in unit.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_owned();
            continue;
        }
        if section == "[Service]" {
            let (k, v) = line.split_once('=').unwrap();
            service.push((k.to_owned(), v.to_owned()));
        }
    }
    let get = |key: &str| -> &str {
        let found: Vec<&str> = service
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(found.len(), 1, "bff@.service: one {key}=, got {found:?}");
        found[0]
    };
    let file = "deploy/systemd/bff@.service";
    // No sd_notify in the binary: `notify` would wait forever for READY=1.
    assert_eq!(get("Type"), "exec", "{file}: the binary does not notify");
    assert_eq!(
        get("KillSignal"),
        "SIGTERM",
        "{file}: the binary drains on SIGTERM"
    );
    assert_eq!(get("Restart"), "on-failure");
    assert_eq!(
        get("RestartPreventExitStatus"),
        "2",
        "{file}: bad config exits 2"
    );
    assert_eq!(get("DynamicUser"), "yes");
    assert_eq!(get("ProtectSystem"), "strict");
    assert_eq!(get("NoNewPrivileges"), "yes");
    assert!(get("EnvironmentFile").contains("/etc/bff/%i.env"));
    let state = get("StateDirectory");

    // Longer than the drain of every config this repository ships.
    let stop = seconds(get("TimeoutStopSec"));
    let mut configs = vec![("deploy/bff.toml".to_owned(), read("deploy/bff.toml"))];
    for c in clients() {
        let f = format!("deploy/k8s/{}/configmap.yaml", c.dir);
        let cm = manifest(&f);
        configs.push((f.clone(), config_data(&cm, "bff.toml", &f).to_owned()));
    }

    let env: Vec<(String, String)> = service
        .iter()
        .filter(|(k, _)| k == "Environment")
        .map(|(_, v)| {
            let (n, v) = v.split_once('=').unwrap();
            (n.to_owned(), v.to_owned())
        })
        .collect();
    for c in clients() {
        let instance = c.dir;
        let exec: Vec<String> = get("ExecStart")
            .replace("%i", instance)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let bin = exec[0].rsplit('/').next().unwrap();
        assert_eq!(bin, c.surface.name, "{file}: bff@{instance} runs {bin}");
        parses(&c.surface, &exec[1..]).unwrap_or_else(|e| panic!("{file}: ExecStart: {e}"));
        assert_eq!(
            flag_value(&exec[1..], "--config"),
            Some(format!("/etc/bff/{instance}.toml").as_str())
        );
        for (what, toml) in &configs {
            // The unit's own variables on top, %S as systemd expands it; events.url from the
            // example Secret (a spool needs a broker).
            let mut vars: Vec<(String, String)> = env
                .iter()
                .map(|(n, v)| {
                    let v = v.replace("%S", "/var/lib").replace("%i", instance);
                    (n.clone(), v)
                })
                .collect();
            let secret = manifest("deploy/k8s/secret.example.yaml");
            vars.push((
                "BFF_EVENTS__URL".into(),
                text(&secret, "stringData.events-url", "secret").to_owned(),
            ));
            let s = load(&c.surface, toml, &vars, what);
            assert_env_names_config_keys(&s, &vars, file);
            let drain = (s.server.shutdown_delay + s.server.shutdown_grace).as_secs_f64();
            assert!(
                stop > drain,
                "{file}: TimeoutStopSec {stop}s must exceed {what}'s shutdown_delay + shutdown_grace ({drain}s)"
            );
            let spool = s.events.spool_dir.clone().unwrap();
            let state_dir = Path::new("/var/lib").join(state.replace("%i", instance));
            assert!(
                spool.starts_with(&state_dir),
                "{file}: the spool {} is outside StateDirectory {}",
                spool.display(),
                state_dir.display()
            );
        }
    }
}

/// `--healthcheck` is a flag of both binaries' parsers, next to `--config`.
#[test]
fn the_healthcheck_flag_is_part_of_both_command_lines() {
    for surface in [web(), mobile()] {
        let m = shared::cli::command(&surface)
            .try_get_matches_from([surface.name, "--config", "x.toml", "--healthcheck"])
            .unwrap();
        assert!(m.get_flag("healthcheck"));
        assert!(parses(&surface, &["--no-such-flag".to_owned()]).is_err());
    }
}
