//! The Helm chart (`helm/silo`): `helm lint --strict` and `helm template` for the default
//! values and the variants in `helm/silo/ci/` (rds provisioner; ServiceMonitor + HPA), every
//! rendered object validated offline against the Kubernetes 1.32 API schemas
//! (`kubernetes-validate --strict`), the values schema rejecting wrong types, and the shape
//! of what matters: probes, securityContext and resources of the Deployments, Secrets and
//! NetworkPolicies.
//!
//! ServiceMonitor and cert-manager's Certificate are CRDs that kubernetes-validate has no
//! schema for: they are left out of the schema validation and checked here instead (a
//! ServiceMonitor selects a rendered Service that has a `metrics` port; the Certificate
//! names both Services and writes the Secret the pods mount).
//!
//! Tools: `SILO_HELM` / `SILO_KUBERNETES_VALIDATE` (scripts/test.sh installs and exports
//! them), else `.tools/helm` / `.venv/bin/kubernetes-validate`. Missing tools fail the tests
//! when `CI` is set and skip them with a message otherwise.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

const KUBE_VERSION: &str = "1.32.0";
const RELEASE: &str = "silo";
const NAMESPACE: &str = "silo";
/// Kinds from CRDs, which kubernetes-validate has no schema for.
const CRD_KINDS: [&str; 2] = ["ServiceMonitor", "Certificate"];

struct Tools {
    helm: PathBuf,
    validate: PathBuf,
    /// The Python that runs kubernetes-validate (it has PyYAML): turns YAML into JSON.
    python: PathBuf,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn chart_dir() -> PathBuf {
    repo_root().join("helm/silo")
}

fn runs(program: &Path, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .is_ok_and(|output| output.status.success())
}

/// The interpreter of a pip-installed console script: `python3` beside it, else its shebang.
fn python_of(script: &Path) -> Option<PathBuf> {
    let sibling = script.with_file_name("python3");
    if sibling.is_file() {
        return Some(sibling);
    }
    let text = std::fs::read_to_string(script).ok()?;
    let shebang = text.lines().next()?.strip_prefix("#!")?.trim();
    Some(PathBuf::from(shebang.split_whitespace().next()?))
}

/// The tools, or None (after saying why) when they are missing outside CI.
fn tools() -> Option<Tools> {
    let root = repo_root();
    let locate = |var: &str, fallback: &str| {
        std::env::var_os(var)
            .filter(|value| !value.is_empty())
            .map_or_else(|| root.join(fallback), PathBuf::from)
    };
    let helm = locate("SILO_HELM", ".tools/helm");
    let validate = locate("SILO_KUBERNETES_VALIDATE", ".venv/bin/kubernetes-validate");
    let mut missing = Vec::new();
    if !runs(&helm, "version") {
        missing.push(format!("helm ({})", helm.display()));
    }
    let python = if runs(&validate, "--version") {
        python_of(&validate)
    } else {
        missing.push(format!("kubernetes-validate ({})", validate.display()));
        None
    };
    match python {
        Some(python) if missing.is_empty() => Some(Tools {
            helm,
            validate,
            python,
        }),
        _ => {
            if missing.is_empty() {
                missing.push(format!("the Python behind {}", validate.display()));
            }
            let message = format!(
                "chart checks need {}: run scripts/test.sh (it installs them) or set \
                 SILO_HELM / SILO_KUBERNETES_VALIDATE",
                missing.join(" and ")
            );
            let in_ci = std::env::var_os("CI").is_some_and(|value| !value.is_empty());
            assert!(!in_ci, "{message}");
            eprintln!("SKIPPED: {message}");
            None
        }
    }
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|error| panic!("{command:?} does not start: {error}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Tools {
    fn helm(&self, subcommand: &str, values: &[&str], extra: &[&str]) -> Output {
        let mut command = Command::new(&self.helm);
        command.arg(subcommand);
        if subcommand == "template" {
            command.args([RELEASE]);
        }
        command.arg(chart_dir());
        if subcommand == "template" {
            command.args(["--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]);
        }
        for file in values {
            command.arg("--values").arg(chart_dir().join(file));
        }
        command.args(extra);
        run(&mut command)
    }

    fn lint(&self, values: &[&str]) {
        let output = self.helm("lint", values, &["--strict"]);
        assert!(
            output.status.success(),
            "helm lint --strict {values:?}:\n{}{}",
            text(&output.stdout),
            text(&output.stderr)
        );
    }

    /// `helm template` with these values files; the rendered YAML.
    fn render(&self, values: &[&str]) -> String {
        let output = self.helm("template", values, &[]);
        assert!(
            output.status.success(),
            "helm template {values:?}: {}",
            text(&output.stderr)
        );
        text(&output.stdout)
    }

    fn to_objects(&self, yaml: &str) -> Vec<Value> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rendered.yaml");
        std::fs::write(&file, yaml).unwrap();
        let output = run(Command::new(&self.python)
            .arg("-c")
            .arg(
                "import json, sys, yaml\n\
             docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]\n\
             print(json.dumps(docs))",
            )
            .arg(&file));
        assert!(
            output.status.success(),
            "rendered YAML does not parse: {}",
            text(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// Every object but the CRD-backed ones must pass kubernetes-validate --strict.
    fn validate(&self, yaml: &str, objects: &[Value]) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rendered.yaml");
        std::fs::write(&file, yaml).unwrap();
        let output = run(Command::new(&self.validate)
            .args(["-k", KUBE_VERSION, "--strict"])
            .arg(&file));
        let report = text(&output.stdout) + &text(&output.stderr);
        assert!(output.status.success(), "kubernetes-validate:\n{report}");
        let passed = report
            .lines()
            .filter(|line| line.contains(" passed for resource "))
            .count();
        let crds = objects
            .iter()
            .filter(|object| CRD_KINDS.contains(&kind(object)))
            .count();
        assert_eq!(
            passed,
            objects.len() - crds,
            "every object but the {crds} of CRD kinds {CRD_KINDS:?} must validate:\n{report}"
        );
        for line in report.lines().filter(|line| line.starts_with("WARN")) {
            assert!(
                CRD_KINDS
                    .iter()
                    .any(|crd| line.contains(&format!("kind {crd} "))),
                "unexpected warning: {line}"
            );
        }
    }

    /// Lint, render, parse and validate one set of values.
    fn checked(&self, values: &[&str]) -> Rendered {
        self.lint(values);
        let yaml = self.render(values);
        let objects = self.to_objects(&yaml);
        self.validate(&yaml, &objects);
        Rendered(objects)
    }
}

fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

struct Rendered(Vec<Value>);

impl Rendered {
    fn all(&self, kind_: &str) -> Vec<&Value> {
        self.0
            .iter()
            .filter(|object| kind(object) == kind_)
            .collect()
    }

    fn find(&self, kind_: &str, name_: &str) -> Option<&Value> {
        self.0
            .iter()
            .find(|object| kind(object) == kind_ && name(object) == name_)
    }

    fn get(&self, kind_: &str, name_: &str) -> &Value {
        self.find(kind_, name_).unwrap_or_else(|| {
            let present: Vec<String> = self
                .0
                .iter()
                .map(|object| format!("{}/{}", kind(object), name(object)))
                .collect();
            panic!("no {kind_}/{name_} rendered; have {present:?}")
        })
    }

    fn container(&self, deployment: &str) -> &Value {
        &self.get("Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]
    }

    /// The container's env vars: the ConfigMap it reads via envFrom, then its own `env`
    /// (values as strings; secret references as "secret:NAME/KEY").
    fn env(&self, deployment: &str) -> Vec<(String, String)> {
        let container = self.container(deployment);
        let mut env = Vec::new();
        for source in container["envFrom"].as_array().into_iter().flatten() {
            let config_map = self.get(
                "ConfigMap",
                source["configMapRef"]["name"].as_str().unwrap(),
            );
            for (key, value) in config_map["data"].as_object().unwrap() {
                env.push((key.clone(), value.as_str().unwrap().to_owned()));
            }
        }
        for var in container["env"].as_array().into_iter().flatten() {
            let value = match var["valueFrom"]["secretKeyRef"].as_object() {
                Some(secret) => format!(
                    "secret:{}/{}",
                    secret["name"].as_str().unwrap(),
                    secret["key"].as_str().unwrap()
                ),
                None => var["value"].as_str().unwrap_or_default().to_owned(),
            };
            env.push((var["name"].as_str().unwrap().to_owned(), value));
        }
        env
    }

    fn env_var(&self, deployment: &str, var: &str) -> Option<String> {
        self.env(deployment)
            .into_iter()
            .find(|(name, _)| name == var)
            .map(|(_, value)| value)
    }
}

fn router() -> String {
    format!("{RELEASE}-router")
}

fn control_plane() -> String {
    format!("{RELEASE}-control-plane")
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// The ports of a NetworkPolicy rule, as numbers or names.
fn rule_ports(rule: &Value) -> Vec<String> {
    rule["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|port| match &port["port"] {
            Value::String(name) => name.clone(),
            other => other.to_string(),
        })
        .collect()
}

fn cidrs(rule: &Value) -> Vec<&str> {
    rule["to"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|peer| peer["ipBlock"]["cidr"].as_str())
        .collect()
}

fn egress_rule_with_port<'a>(policy: &'a Value, port: &str) -> Option<&'a Value> {
    policy["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .find(|rule| rule_ports(rule).iter().any(|p| p == port))
}

fn assert_hardened(deployment: &Value, container: &Value) {
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    // The read-only root needs a writable /tmp.
    let mounts = container["volumeMounts"].as_array().unwrap();
    assert!(mounts.iter().any(|mount| mount["mountPath"] == "/tmp"));
    let resources = &container["resources"];
    assert!(resources["requests"]["cpu"].is_string(), "{resources}");
    assert!(resources["requests"]["memory"].is_string(), "{resources}");
    assert!(resources["limits"]["memory"].is_string(), "{resources}");
}

fn assert_grpc_probe(probe: &Value, port: u16, service: &str) {
    assert_eq!(probe["grpc"]["port"], port, "{probe}");
    assert_eq!(probe["grpc"]["service"], service, "{probe}");
}

#[test]
fn default_values_render_valid_hardened_deployments() {
    let Some(tools) = tools() else { return };
    let rendered = tools.checked(&[]);

    // Router Deployment: probes on grpc.health.v1, hardened, sized, its secret by reference.
    let deployment = rendered.get("Deployment", &router());
    assert_eq!(deployment["spec"]["replicas"], 3);
    let container = rendered.container(&router());
    assert_eq!(container["command"][0], "/usr/local/bin/silo-router");
    assert_grpc_probe(&container["readinessProbe"], 50051, "silo.router.v1.Router");
    assert_grpc_probe(&container["startupProbe"], 50051, "silo.router.v1.Router");
    // Liveness does not follow the control-plane connection: a control-plane outage must
    // not restart routers (they would lose the routes that keep known tenants working).
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/metrics");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "metrics");
    assert!(container["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64() > Some(0));
    assert_hardened(deployment, container);
    let ports: Vec<_> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|port| {
            (
                port["name"].as_str().unwrap(),
                port["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports, [("grpc", 50051), ("metrics", 9151)]);
    assert_eq!(
        rendered
            .env_var(&router(), "SILO_CONTROL_PLANE_TOKEN")
            .as_deref(),
        Some("secret:silo-router/control-plane-token")
    );
    assert_eq!(
        rendered.env_var(&router(), "SILO_LISTEN").as_deref(),
        Some("0.0.0.0:50051")
    );
    assert_eq!(
        rendered
            .env_var(&router(), "SILO_METRICS_LISTEN")
            .as_deref(),
        Some("0.0.0.0:9151")
    );
    assert_eq!(
        rendered
            .env_var(&router(), "SILO_CONTROL_PLANE_URL")
            .as_deref(),
        Some("http://silo-control-plane.silo.svc:50052")
    );
    assert_eq!(
        rendered
            .env_var(&router(), "SILO_JWT_PUBLIC_KEY_FILE")
            .as_deref(),
        Some("/etc/silo/jwt/jwt-public-key.pem")
    );
    // The router never sees the catalog, the credential key or the fleet DSNs.
    for secret_var in [
        "SILO_CATALOG_URL",
        "SILO_CREDENTIALS_KEY",
        "SILO_POSTGRES_SERVERS",
    ] {
        assert_eq!(
            rendered.env_var(&router(), secret_var),
            None,
            "{secret_var}"
        );
    }

    // Control plane: same hardening, its secrets by reference from the Secret you create.
    let deployment = rendered.get("Deployment", &control_plane());
    assert_eq!(deployment["spec"]["replicas"], 2);
    let container = rendered.container(&control_plane());
    assert_grpc_probe(
        &container["readinessProbe"],
        50052,
        "silo.controlplane.v1.ControlPlane",
    );
    assert_hardened(deployment, container);
    for (var, key) in [
        ("SILO_CATALOG_URL", "catalog-url"),
        ("SILO_CREDENTIALS_KEY", "credentials-key"),
        ("SILO_POSTGRES_SERVERS", "postgres-servers"),
    ] {
        assert_eq!(
            rendered.env_var(&control_plane(), var),
            Some(format!("secret:silo-control-plane/{key}")),
            "{var}"
        );
    }
    assert_eq!(rendered.env_var(&control_plane(), "SILO_RDS_REGION"), None);
    // No Secret is rendered by default: the operator creates them.
    assert!(rendered.all("Secret").is_empty());
    assert!(rendered.all("HorizontalPodAutoscaler").is_empty());
    assert!(rendered.all("ServiceMonitor").is_empty());

    for component in [router(), control_plane()] {
        let service = rendered.get("Service", &component);
        let ports: Vec<_> = service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|port| port["name"].as_str().unwrap())
            .collect();
        assert_eq!(ports, ["grpc", "metrics"], "{component}");
        let pdb = rendered.get("PodDisruptionBudget", &component);
        assert_eq!(pdb["spec"]["maxUnavailable"], 1, "{component}");
    }

    // NetworkPolicies: the router reaches the tenant databases and the control plane; the
    // control plane admits the routers only (no admin selectors by default).
    let policy = rendered.get("NetworkPolicy", &router());
    assert_eq!(
        strings(&policy["spec"]["policyTypes"]),
        ["Ingress", "Egress"]
    );
    let databases = egress_rule_with_port(policy, "5432").expect("router egress to 5432");
    assert_eq!(
        cidrs(databases),
        ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
    );
    let to_cp = egress_rule_with_port(policy, "50052").expect("router egress to the control plane");
    assert_eq!(
        to_cp["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "control-plane"
    );
    assert!(egress_rule_with_port(policy, "53").is_some(), "DNS");

    let policy = rendered.get("NetworkPolicy", &control_plane());
    assert_eq!(
        strings(&policy["spec"]["policyTypes"]),
        ["Ingress", "Egress"]
    );
    let grpc_in = policy["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .find(|rule| rule_ports(rule) == ["grpc"])
        .expect("control-plane grpc ingress");
    let from = grpc_in["from"].as_array().unwrap();
    assert_eq!(from.len(), 1, "only the routers: {from:?}");
    assert_eq!(
        from[0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "router"
    );
    assert_eq!(
        from[0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"],
        RELEASE
    );
    assert!(
        egress_rule_with_port(policy, "443").is_none(),
        "no AWS API without rds"
    );
}

#[test]
fn rds_variant_renders_valid_with_irsa_and_chart_made_secrets() {
    let Some(tools) = tools() else { return };
    let rendered = tools.checked(&["ci/rds-values.yaml"]);

    let cp = control_plane();
    assert_eq!(
        rendered.env_var(&cp, "SILO_RDS_REGION").as_deref(),
        Some("eu-west-1")
    );
    assert_eq!(
        rendered
            .env_var(&cp, "SILO_RDS_RECONCILE_INTERVAL_SECS")
            .as_deref(),
        Some("900")
    );
    assert_eq!(
        rendered.env_var(&cp, "SILO_POSTGRES_SERVERS"),
        None,
        "postgres fleet off"
    );
    assert_eq!(
        rendered.env_var(&cp, "SILO_TIERS_FILE").as_deref(),
        Some("/etc/silo/tiers/tiers.toml")
    );
    let tiers = rendered.get("ConfigMap", &format!("{cp}-tiers"));
    let tiers_toml = tiers["data"]["tiers.toml"].as_str().unwrap();
    assert!(tiers_toml.contains("provisioner = \"rds\""));
    // The control plane would start with it: the rds tier names the mounted CA bundle.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), tiers_toml).unwrap();
    silo_control_plane::config::Tiers::load(Some(&file.path().to_path_buf()))
        .expect("the rendered tiers load");
    for deployment in [cp.clone(), router()] {
        let mounts = rendered.container(&deployment)["volumeMounts"].clone();
        assert!(
            mounts
                .as_array()
                .unwrap()
                .iter()
                .any(|mount| mount["mountPath"] == "/etc/silo/tenant-ca"),
            "{deployment}: the CA bundle is mounted where the tier names it"
        );
    }

    // IRSA: the role on the service account, and a token the AWS SDK can exchange.
    let account = rendered.get("ServiceAccount", &cp);
    assert_eq!(
        account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::123456789012:role/silo-control-plane"
    );
    let pod = &rendered.get("Deployment", &cp)["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], cp.as_str());
    assert_eq!(pod["automountServiceAccountToken"], true);
    assert_eq!(
        rendered.get("Deployment", &router())["spec"]["template"]["spec"]["automountServiceAccountToken"],
        false
    );

    // Secrets made by the chart; HMAC tokens from the JWT Secret, no key file mounted.
    let secret = rendered.get("Secret", &cp);
    let keys: Vec<&String> = secret["stringData"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["catalog-url", "credentials-key"]);
    rendered.get("Secret", &router());
    for deployment in [router(), cp.clone()] {
        assert_eq!(
            rendered
                .env_var(&deployment, "SILO_JWT_HMAC_SECRET")
                .as_deref(),
            Some("secret:silo-jwt/hmac-secret")
        );
        assert_eq!(
            rendered
                .env_var(&deployment, "SILO_JWT_ALGORITHMS")
                .as_deref(),
            Some("HS256")
        );
        assert_eq!(
            rendered.env_var(&deployment, "SILO_JWT_PUBLIC_KEY_FILE"),
            None
        );
    }

    // The router's tenant databases and the control plane's AWS API egress, as configured.
    let policy = rendered.get("NetworkPolicy", &router());
    let databases = egress_rule_with_port(policy, "5432").unwrap();
    assert_eq!(cidrs(databases), ["10.20.0.0/16"]);
    assert!(
        egress_rule_with_port(policy, "443").is_none(),
        "the router never calls AWS"
    );
    let policy = rendered.get("NetworkPolicy", &cp);
    assert_eq!(
        cidrs(egress_rule_with_port(policy, "443").unwrap()),
        ["0.0.0.0/0"]
    );
    assert_eq!(
        cidrs(egress_rule_with_port(policy, "5432").unwrap()),
        ["10.20.0.0/16", "10.30.0.0/24"]
    );
}

#[test]
fn monitoring_variant_renders_service_monitors_and_router_autoscaler() {
    let Some(tools) = tools() else { return };
    let rendered = tools.checked(&["ci/monitoring-values.yaml"]);

    // Spans go to the collector: the endpoint in both services, egress to it allowed.
    for deployment in [router(), control_plane()] {
        assert_eq!(
            rendered
                .env_var(&deployment, "OTEL_EXPORTER_OTLP_ENDPOINT")
                .as_deref(),
            Some("http://otel-collector.observability.svc:4317"),
            "{deployment}"
        );
        let policy = rendered.get("NetworkPolicy", &deployment);
        assert!(
            egress_rule_with_port(policy, "4317").is_some(),
            "{deployment}: egress to the collector"
        );
    }

    // The HPA owns the router's replica count.
    let hpa = rendered.get("HorizontalPodAutoscaler", &router());
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], router().as_str());
    assert_eq!(hpa["spec"]["minReplicas"], 4);
    assert_eq!(hpa["spec"]["maxReplicas"], 30);
    assert_eq!(hpa["spec"]["metrics"].as_array().unwrap().len(), 2);
    assert!(
        rendered.get("Deployment", &router())["spec"]
            .get("replicas")
            .is_none()
    );

    // ServiceMonitors (no schema offline: a CRD) select a rendered Service with a metrics port.
    let monitors = rendered.all("ServiceMonitor");
    assert_eq!(monitors.len(), 2);
    for monitor in monitors {
        assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(
            monitor["metadata"]["labels"]["release"],
            "kube-prometheus-stack"
        );
        let selector = monitor["spec"]["selector"]["matchLabels"]
            .as_object()
            .unwrap();
        let services: Vec<&Value> = rendered
            .all("Service")
            .into_iter()
            .filter(|service| {
                selector
                    .iter()
                    .all(|(key, value)| &service["metadata"]["labels"][key] == value)
            })
            .collect();
        assert_eq!(services.len(), 1, "{} selects one Service", name(monitor));
        let endpoint = &monitor["spec"]["endpoints"][0];
        assert_eq!(endpoint["port"], "metrics");
        assert_eq!(endpoint["path"], "/metrics");
        assert_eq!(endpoint["interval"], "15s");
        assert!(
            services[0]["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|port| port["name"] == "metrics")
        );
        assert_eq!(
            strings(&monitor["spec"]["namespaceSelector"]["matchNames"]),
            [NAMESPACE]
        );
    }

    // Existing Secrets under their own names; JWKS keys mounted from theirs.
    assert!(rendered.all("Secret").is_empty());
    assert_eq!(
        rendered
            .env_var(&router(), "SILO_CONTROL_PLANE_TOKEN")
            .as_deref(),
        Some("secret:silo-router-credentials/control-plane-token")
    );
    assert_eq!(
        rendered
            .env_var(&control_plane(), "SILO_CATALOG_URL")
            .as_deref(),
        Some("secret:silo-control-plane-credentials/catalog-url")
    );
    assert_eq!(
        rendered.env_var(&router(), "SILO_JWT_JWKS_FILE").as_deref(),
        Some("/etc/silo/jwt/jwks.json")
    );
    let volumes = &rendered.get("Deployment", &router())["spec"]["template"]["spec"]["volumes"];
    let jwt = volumes
        .as_array()
        .unwrap()
        .iter()
        .find(|volume| volume["name"] == "jwt")
        .unwrap();
    assert_eq!(jwt["secret"]["secretName"], "silo-idp-jwks");

    let container = rendered.container(&router());
    assert_grpc_probe(&container["livenessProbe"], 50051, "silo.router.v1.Router");

    // Admin selectors and scrapers as configured.
    let policy = rendered.get("NetworkPolicy", &control_plane());
    let ingress = policy["spec"]["ingress"].as_array().unwrap();
    let grpc_in = ingress
        .iter()
        .find(|rule| rule_ports(rule) == ["grpc"])
        .unwrap();
    let from = grpc_in["from"].as_array().unwrap();
    assert_eq!(from.len(), 3, "routers + two admin peers: {from:?}");
    assert_eq!(
        from[2]["podSelector"]["matchLabels"]["silo.dev/role"],
        "admin"
    );
    let metrics_in = ingress
        .iter()
        .find(|rule| rule_ports(rule) == ["metrics"])
        .unwrap();
    assert_eq!(
        metrics_in["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    let policy = rendered.get("NetworkPolicy", &router());
    let grpc_in = policy["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .find(|rule| rule_ports(rule) == ["grpc"])
        .unwrap();
    assert_eq!(
        grpc_in["from"][0]["namespaceSelector"]["matchLabels"]["silo.dev/client"],
        "true"
    );
}

fn assert_http_probe(probe: &Value, path: &str) {
    assert_eq!(probe["httpGet"]["path"], path, "{probe}");
    assert_eq!(probe["httpGet"]["port"], "metrics", "{probe}");
    assert!(probe.get("grpc").is_none(), "{probe}");
}

#[test]
fn tls_variant_mounts_the_secret_and_probes_over_the_metrics_port() {
    let Some(tools) = tools() else { return };
    let rendered = tools.checked(&["ci/tls-values.yaml"]);

    // One cert-manager Certificate for both Services, for server and client auth.
    let certificate = rendered.get("Certificate", "silo-tls");
    assert_eq!(certificate["apiVersion"], "cert-manager.io/v1");
    assert_eq!(certificate["spec"]["secretName"], "silo-tls");
    assert_eq!(certificate["spec"]["issuerRef"]["name"], "silo-ca");
    assert_eq!(certificate["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    let usages = strings(&certificate["spec"]["usages"]);
    assert!(usages.contains(&"server auth") && usages.contains(&"client auth"));
    let names = strings(&certificate["spec"]["dnsNames"]);
    for name in [
        "silo-router.silo.svc",
        "silo-control-plane.silo.svc",
        "silo-control-plane.silo.svc.cluster.local",
        "silo.example.com",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }

    for deployment in [router(), control_plane()] {
        // Server TLS with client certificates required, from the mounted Secret.
        for (var, file) in [
            ("SILO_TLS_CERT_FILE", "/etc/silo/tls/tls.crt"),
            ("SILO_TLS_KEY_FILE", "/etc/silo/tls/tls.key"),
            ("SILO_TLS_CLIENT_CA_FILE", "/etc/silo/tls/ca.crt"),
        ] {
            assert_eq!(
                rendered.env_var(&deployment, var).as_deref(),
                Some(file),
                "{deployment} {var}"
            );
        }
        let pod = &rendered.get("Deployment", &deployment)["spec"]["template"]["spec"];
        let volume = |name: &str| {
            pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|volume| volume["name"] == name)
                .unwrap_or_else(|| panic!("{deployment}: no volume {name}"))
                .clone()
        };
        assert_eq!(volume("tls")["secret"]["secretName"], "silo-tls");
        let tenant_ca = volume("tenant-ca");
        assert_eq!(tenant_ca["configMap"]["name"], "rds-ca-bundle");
        assert_eq!(
            tenant_ca["configMap"]["items"][0]["path"],
            "global-bundle.pem"
        );
        let container = rendered.container(&deployment);
        let mounts = container["volumeMounts"].as_array().unwrap();
        for (name, path) in [
            ("tls", "/etc/silo/tls"),
            ("tenant-ca", "/etc/silo/tenant-ca"),
        ] {
            let mount = mounts
                .iter()
                .find(|mount| mount["name"] == name)
                .unwrap_or_else(|| panic!("{deployment}: no mount {name}"));
            assert_eq!(mount["mountPath"], path);
            assert_eq!(mount["readOnly"], true);
            // A subPath mount would never see a renewed certificate.
            assert!(mount.get("subPath").is_none());
        }

        // gRPC probes cannot speak TLS: the metrics port answers them.
        assert_http_probe(&container["startupProbe"], "/readyz");
        assert_http_probe(&container["readinessProbe"], "/readyz");
        assert_http_probe(&container["livenessProbe"], "/healthz");
        assert_hardened(rendered.get("Deployment", &deployment), container);
    }

    // The router reaches the control plane over https, trusting the Secret's CA and
    // presenting the Secret's certificate.
    for (var, value) in [
        (
            "SILO_CONTROL_PLANE_URL",
            "https://silo-control-plane.silo.svc:50052",
        ),
        ("SILO_CONTROL_PLANE_CA_FILE", "/etc/silo/tls/ca.crt"),
        ("SILO_CONTROL_PLANE_CERT_FILE", "/etc/silo/tls/tls.crt"),
        ("SILO_CONTROL_PLANE_KEY_FILE", "/etc/silo/tls/tls.key"),
    ] {
        assert_eq!(
            rendered.env_var(&router(), var).as_deref(),
            Some(value),
            "{var}"
        );
    }
    assert_eq!(
        rendered.env_var(&control_plane(), "SILO_CONTROL_PLANE_URL"),
        None
    );

    // Without TLS none of it is rendered.
    let plain = Rendered(tools.to_objects(&tools.render(&[])));
    assert!(plain.all("Certificate").is_empty());
    for deployment in [router(), control_plane()] {
        assert_eq!(plain.env_var(&deployment, "SILO_TLS_CERT_FILE"), None);
    }

    // A gRPC liveness probe cannot work with TLS: refused with the reason.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("grpc-liveness.yaml");
    std::fs::write(
        &file,
        "router:\n  probes:\n    readiness: {periodSeconds: 5, timeoutSeconds: 2, failureThreshold: 2}\n    \
         liveness: {type: grpc, periodSeconds: 10, timeoutSeconds: 3, failureThreshold: 6}\n    \
         startup: {periodSeconds: 5, timeoutSeconds: 2, failureThreshold: 60}\n",
    )
    .unwrap();
    let output = tools.helm(
        "template",
        &["ci/tls-values.yaml"],
        &["--values", file.to_str().unwrap()],
    );
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("gRPC probes do not speak TLS"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn values_schema_rejects_wrong_types_and_unknown_keys() {
    let Some(tools) = tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("router:\n  replicas: \"three\"\n", "/router/replicas"),
        ("router:\n  replica: 3\n", "replica"),
        (
            "controlPlane:\n  ports:\n    grpc: 70000\n",
            "/controlPlane/ports/grpc",
        ),
        ("jwt:\n  keyType: pem\n", "/jwt/keyType"),
        (
            "controlPlane:\n  provisioners:\n    rds:\n      enabled: true\n",
            "/controlPlane/provisioners/rds",
        ),
        (
            "router:\n  secret:\n    create: true\n",
            "/router/secret/controlPlaneToken",
        ),
        (
            "networkPolicy:\n  router:\n    tenantDatabases:\n      cidrs: [10.0.0.0]\n      ports: [5432]\n",
            "cidrs",
        ),
        ("tls:\n  mutal: true\n", "mutal"),
        (
            "tls:\n  enabled: true\n  certManager:\n    enabled: true\n",
            "/tls/certManager/issuerRef/name",
        ),
        (
            "tenantDatabaseCa:\n  configMapName: rds-ca\n",
            "/tenantDatabaseCa",
        ),
        (
            "tenantDatabaseCa:\n  secretName: a\n  configMapName: b\n  key: ca.pem\n",
            "/tenantDatabaseCa",
        ),
    ];
    for (index, (values, complaint)) in cases.into_iter().enumerate() {
        let file = dir.path().join(format!("bad-{index}.yaml"));
        std::fs::write(&file, values).unwrap();
        let file = file.to_str().unwrap();
        for subcommand in ["template", "lint"] {
            let output = tools.helm(subcommand, &[], &["--values", file]);
            let report = text(&output.stdout) + &text(&output.stderr);
            assert!(
                !output.status.success(),
                "helm {subcommand} accepted {values:?}:\n{report}"
            );
            assert!(
                report.contains(complaint),
                "helm {subcommand} {values:?}: expected a complaint about {complaint}:\n{report}"
            );
        }
    }
}
