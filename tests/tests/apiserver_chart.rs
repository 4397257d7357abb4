//! Tier 2 (real kube-apiserver + etcd): the Helm chart. `helm lint`, the values schema, what the
//! rendered objects promise (least privilege, locked-down containers), a server-side dry run of
//! the rendered manifests, and `helm install` / `upgrade` / `uninstall` on the apiserver.
//!
//! `helm` and `kubectl` come from PATH (`source ~/.cache/policyserve/env.sh` after `make deps`).
//! The test apiserver is Kubernetes 1.20, which matters twice: it has no gRPC probes (the chart
//! falls back to TCP probes there), and Helm 4 installs CRDs by server-side apply, which 1.20
//! refuses for the CRDs' `x-kubernetes-validations`; `--server-side=false` is the documented way
//! to install on clusters before 1.25. There is no kubelet, so workloads never get Pods: the
//! tests check objects, not readiness.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::Api;
use policyserve_tests::{client, kubeconfig, test_namespace, unique_name, workspace_root};
use serde_json::Value;

const CRDS: [&str; 2] = [
    "policyservices.policyserve.io",
    "optimizationprofiles.policyserve.io",
];

fn chart() -> PathBuf {
    workspace_root().join("charts/policyserve")
}

/// `name` from PATH, or a panic that says how to get it.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not on PATH: run `make deps` and `source ~/.cache/policyserve/env.sh` \
                 (or run the tests with `make test`)"
            )
        })
}

/// Runs `program args` against the test cluster, with `stdin` piped in when given.
fn exec(program: &str, args: &[&str], stdin: Option<&str>) -> Result<Output> {
    let mut child = Command::new(tool(program))
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to start {program}"))?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .context("no stdin")?
            .write_all(input.as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}

/// Runs `program args` and returns its stdout, failing with its stderr when it fails.
fn ok(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let output = exec(program, args, stdin)?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed ({}):\n{}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

fn helm(args: &[&str]) -> Result<String> {
    ok("helm", args, None)
}

/// `helm template` of the chart as release `release` in `namespace`, with `--set` values.
fn template(release: &str, namespace: &str, extra: &[&str]) -> Result<String> {
    let chart = chart();
    let mut args = vec![
        "template",
        release,
        chart.to_str().context("chart path")?,
        "--namespace",
        namespace,
    ];
    args.extend_from_slice(extra);
    helm(&args)
}

/// The rendered objects, one JSON value each.
fn objects(rendered: &str) -> Result<Vec<Value>> {
    let mut objects = Vec::new();
    for document in serde_yaml::Deserializer::from_str(rendered) {
        let value: Value = serde::Deserialize::deserialize(document)?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// The apiserver's version, as `--kube-version` wants it (`v1.20.2`).
async fn server_version(client: &Client) -> Result<String> {
    Ok(client.apiserver_version().await?.git_version)
}

#[test]
fn helm_lint_is_clean_also_strict_and_with_every_option_on() -> Result<()> {
    let chart = chart();
    let chart = chart.to_str().context("chart path")?;
    helm(&["lint", chart])?;
    helm(&["lint", "--strict", chart])?;
    helm(&[
        "lint",
        "--strict",
        chart,
        "--set",
        "agent.gpu.enabled=true,agent.hostSys.enabled=true,metrics.serviceMonitor.enabled=true",
        "--set",
        "operator.replicas=2,operator.watchNamespace=robots,operator.nodeSelectorFilter=pool=inference",
        "--set",
        "networkPolicy.enabled=true,admissionPolicy.enabled=true",
    ])?;
    Ok(())
}

#[test]
fn the_values_schema_rejects_bad_values_with_the_field_named() -> Result<()> {
    for (set, field) in [
        ("operator.replicas=-1", "/operator/replicas"),
        ("operator.logFormat=xml", "/operator/logFormat"),
        ("agent.probes.type=http", "/agent/probes/type"),
        ("agent.grpcPort=70000", "/agent/grpcPort"),
        (
            "operator.scaleDownStabilization=soon",
            "/operator/scaleDownStabilization",
        ),
        ("operator.replicaCount=2", "replicaCount"),
    ] {
        let output = exec(
            "helm",
            &["template", "bad", chart().to_str().unwrap(), "--set", set],
            None,
        )?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "helm accepted --set {set}");
        assert!(
            stderr.contains(field),
            "--set {set}: the error does not name {field}: {stderr}"
        );
    }
    Ok(())
}

#[test]
fn several_operator_replicas_without_leader_election_are_refused() -> Result<()> {
    let output = exec(
        "helm",
        &[
            "template",
            "bad",
            chart().to_str().unwrap(),
            "--set",
            "operator.replicas=2,operator.leaderElection.enabled=false",
        ],
        None,
    )?;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("leaderElection"));
    Ok(())
}

#[test]
fn rbac_names_every_resource_and_verb_without_wildcards() -> Result<()> {
    let rendered = objects(&template(
        "rbac",
        "policyserve-system",
        &["--set", "agent.gpu.enabled=true"],
    )?)?;
    let mut roles = of_kind(&rendered, "ClusterRole");
    roles.extend(of_kind(&rendered, "Role"));
    assert_eq!(
        roles.len(),
        4,
        "operator and agent ClusterRoles, the leader-election Role, the agents' Lease Role"
    );
    for role in &roles {
        for rule in role["rules"].as_array().context("rules")? {
            for field in ["apiGroups", "resources", "verbs"] {
                let values = rule[field].as_array().context("rule field")?;
                assert!(!values.is_empty(), "{}: empty {field}", name_of(role));
                assert!(
                    values.iter().all(|v| v != "*"),
                    "{}: wildcard in {field}",
                    name_of(role)
                );
            }
        }
    }
    // (resource, verb) pairs a role grants.
    let grants = |name: &str| -> BTreeSet<(String, String)> {
        let role = roles
            .iter()
            .find(|r| name_of(r) == name)
            .unwrap_or_else(|| panic!("no role {name}"));
        let mut grants = BTreeSet::new();
        for rule in role["rules"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    let resource = resource.as_str().unwrap().to_owned();
                    grants.insert((resource, verb.as_str().unwrap().to_owned()));
                }
            }
        }
        grants
    };
    let has = |grants: &BTreeSet<(String, String)>, resource: &str, verb: &str| {
        grants.contains(&(resource.to_owned(), verb.to_owned()))
    };

    let agent = grants("rbac-policyserve-agent");
    for (resource, verb) in [
        ("nodes", "get"),
        ("nodes", "patch"),
        ("optimizationprofiles", "watch"),
        ("optimizationprofiles/status", "patch"),
        ("configmaps", "get"),
    ] {
        assert!(
            has(&agent, resource, verb),
            "agent cannot {verb} {resource}"
        );
    }
    // The agent reads profiles and writes only their status; it never writes secrets, specs or
    // other objects, and asks for nothing its code does not call.
    for (resource, verb) in [
        ("nodes", "list"),
        ("nodes", "watch"),
        ("configmaps", "list"),
        ("configmaps", "watch"),
        ("events", "create"),
        ("optimizationprofiles", "create"),
        ("optimizationprofiles", "patch"),
        ("optimizationprofiles", "delete"),
        ("policyservices", "get"),
        ("secrets", "get"),
        ("nodes", "delete"),
        ("configmaps", "patch"),
    ] {
        assert!(!has(&agent, resource, verb), "agent may {verb} {resource}");
    }

    let operator = grants("rbac-policyserve-operator");
    for (resource, verb) in [
        ("policyservices", "watch"),
        ("policyservices", "patch"),
        ("policyservices/status", "patch"),
        ("optimizationprofiles", "create"),
        ("optimizationprofiles", "patch"),
        ("optimizationprofiles", "delete"),
        ("optimizationprofiles", "deletecollection"),
        ("nodes", "list"),
        ("nodes", "watch"),
        ("events", "create"),
    ] {
        assert!(
            has(&operator, resource, verb),
            "operator cannot {verb} {resource}"
        );
    }
    for (resource, verb) in [
        ("nodes", "patch"),
        ("optimizationprofiles/status", "patch"),
        ("secrets", "get"),
        ("configmaps", "get"),
        ("leases", "create"),
    ] {
        assert!(
            !has(&operator, resource, verb),
            "operator may {verb} {resource}"
        );
    }
    let lease = grants("rbac-policyserve-operator-leader-election");
    assert!(has(&lease, "leases", "create") && has(&lease, "leases", "patch"));
    Ok(())
}

#[test]
fn every_container_runs_locked_down_with_resources_and_probes() -> Result<()> {
    let rendered = objects(&template(
        "locked",
        "policyserve-system",
        &["--set", "agent.gpu.enabled=true,agent.hostSys.enabled=true"],
    )?)?;
    let mut workloads = of_kind(&rendered, "Deployment");
    workloads.extend(of_kind(&rendered, "DaemonSet"));
    assert_eq!(workloads.len(), 3, "operator, CPU agents, GPU agents");
    for workload in workloads {
        let name = name_of(workload);
        let pod = &workload["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert!(!pod["hostNetwork"].as_bool().unwrap_or(false), "{name}");
        for container in pod["containers"].as_array().context("containers")? {
            let security = &container["securityContext"];
            assert_eq!(security["runAsNonRoot"], true, "{name}");
            assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(security["capabilities"]["drop"][0], "ALL", "{name}");
            assert_eq!(
                security["seccompProfile"]["type"], "RuntimeDefault",
                "{name}"
            );
            assert!(
                container["resources"]["requests"]["cpu"].is_string(),
                "{name}"
            );
            assert!(
                container["resources"]["requests"]["memory"].is_string(),
                "{name}"
            );
            assert!(container["livenessProbe"].is_object(), "{name}");
            assert!(container["readinessProbe"].is_object(), "{name}");
            // Host paths, when mounted at all, are read-only.
            for mount in container["volumeMounts"].as_array().into_iter().flatten() {
                let volume = pod["volumes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|v| v["name"] == mount["name"])
                    .context("volume of a mount")?;
                if volume["hostPath"].is_object() {
                    assert_eq!(mount["readOnly"], true, "{name}: {mount}");
                }
            }
        }
    }
    let operator =
        &of_kind(&rendered, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(operator["resources"]["limits"]["memory"], "256Mi");
    assert_eq!(operator["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(operator["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(operator["readinessProbe"]["httpGet"]["port"], "metrics");
    Ok(())
}

#[test]
fn agents_get_their_node_name_pod_ip_ports_and_writable_scratch_space() -> Result<()> {
    let rendered = objects(&template(
        "agents",
        "policyserve-system",
        &["--set", "agent.gpu.enabled=true"],
    )?)?;
    let daemonsets = of_kind(&rendered, "DaemonSet");
    let cpu = daemonsets
        .iter()
        .find(|d| name_of(d) == "agents-policyserve-agent")
        .context("CPU DaemonSet")?;
    let gpu = daemonsets
        .iter()
        .find(|d| name_of(d) == "agents-policyserve-agent-gpu")
        .context("GPU DaemonSet")?;
    for daemonset in [cpu, gpu] {
        let pod = &daemonset["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert_eq!(container["args"][0], "run");
        let env = container["env"].as_array().context("env")?;
        let field_of = |name: &str| {
            env.iter()
                .find(|e| e["name"] == name)
                .map(|e| e["valueFrom"]["fieldRef"]["fieldPath"].clone())
        };
        assert_eq!(field_of("NODE_NAME"), Some("spec.nodeName".into()));
        assert_eq!(field_of("POD_IP"), Some("status.podIP".into()));
        let ports: Vec<(String, i64)> = container["ports"]
            .as_array()
            .context("ports")?
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_owned(),
                    p["containerPort"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            ports,
            [("grpc".to_owned(), 8001), ("metrics".to_owned(), 8002)]
        );
        let mounts: BTreeSet<&str> = container["volumeMounts"]
            .as_array()
            .context("mounts")?
            .iter()
            .filter_map(|m| m["mountPath"].as_str())
            .collect();
        assert!(mounts.contains("/tmp") && mounts.contains("/var/cache/policyserve"));
    }
    let gpu_pod = &gpu["spec"]["template"]["spec"];
    assert_eq!(gpu_pod["runtimeClassName"], "nvidia");
    assert!(
        gpu_pod["containers"][0]["image"]
            .as_str()
            .unwrap()
            .ends_with("-gpu")
    );
    assert_eq!(gpu_pod["nodeSelector"]["nvidia.com/gpu.present"], "true");
    assert_eq!(gpu_pod["tolerations"][0]["key"], "nvidia.com/gpu");
    // The CPU agents stay off the nodes the GPU agents serve.
    let avoid = &cpu["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"][0]["matchExpressions"][0];
    assert_eq!(avoid["key"], "nvidia.com/gpu.present");
    assert_eq!(avoid["operator"], "NotIn");
    Ok(())
}

#[test]
fn agents_use_grpc_probes_where_kubernetes_has_them_and_tcp_before() -> Result<()> {
    let probe = |version: &str, extra: &[&str]| -> Result<Value> {
        let mut args = vec!["--kube-version", version];
        args.extend_from_slice(extra);
        let rendered = objects(&template("probes", "policyserve-system", &args)?)?;
        Ok(of_kind(&rendered, "DaemonSet")[0]["spec"]["template"]["spec"]["containers"][0]
            ["readinessProbe"]
            .clone())
    };
    assert_eq!(probe("1.30.0", &[])?["grpc"]["port"], 8001);
    assert_eq!(probe("1.20.2", &[])?["tcpSocket"]["port"], "grpc");
    assert_eq!(
        probe("1.30.0", &["--set", "agent.probes.type=tcp"])?["tcpSocket"]["port"],
        "grpc"
    );
    Ok(())
}

#[test]
fn agents_with_tls_serve_from_the_secret_and_probe_the_plaintext_health_port() -> Result<()> {
    let container = |version: &str, values: &str| -> Result<Value> {
        let rendered = objects(&template(
            "tls",
            "policyserve-system",
            &["--kube-version", version, "--set", values],
        )?)?;
        let pod = &of_kind(&rendered, "DaemonSet")[0]["spec"]["template"]["spec"];
        let secret = pod["volumes"]
            .as_array()
            .context("volumes")?
            .iter()
            .find(|v| v["name"] == "tls")
            .map(|v| v["secret"].clone());
        let mut container = pod["containers"][0].clone();
        container["tlsSecret"] = secret.unwrap_or(Value::Null);
        Ok(container)
    };
    let args = |container: &Value| -> Vec<String> {
        container["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect()
    };

    let mtls = container(
        "1.30.0",
        "agent.tls.enabled=true,agent.tls.secretName=agent-tls,agent.tls.clientAuth=true",
    )?;
    assert_eq!(mtls["tlsSecret"]["secretName"], "agent-tls");
    let mount = mtls["volumeMounts"]
        .as_array()
        .context("mounts")?
        .iter()
        .find(|m| m["name"] == "tls")
        .context("the Secret is mounted")?;
    assert_eq!(mount["mountPath"], "/etc/policyserve/tls");
    assert_eq!(mount["readOnly"], true);
    // A whole-folder mount: kubelet renews no subPath mount.
    assert!(mount.get("subPath").is_none());
    for flag in [
        "--tls-cert=/etc/policyserve/tls/tls.crt",
        "--tls-key=/etc/policyserve/tls/tls.key",
        "--tls-client-ca=/etc/policyserve/tls/ca.crt",
        "--health-addr=0.0.0.0:8003",
    ] {
        assert!(args(&mtls).iter().any(|a| a == flag), "no {flag}");
    }
    assert!(
        mtls["ports"]
            .as_array()
            .context("ports")?
            .iter()
            .any(|p| p["name"] == "health" && p["containerPort"] == 8003)
    );
    assert_eq!(mtls["readinessProbe"]["grpc"]["port"], 8003);
    assert_eq!(mtls["livenessProbe"]["grpc"]["port"], 8003);

    let tls = container(
        "1.20.2",
        "agent.tls.enabled=true,agent.tls.secretName=agent-tls",
    )?;
    assert!(!args(&tls).iter().any(|a| a.starts_with("--tls-client-ca")));
    assert_eq!(tls["readinessProbe"]["tcpSocket"]["port"], "health");

    let plaintext = container("1.30.0", "agent.tls.enabled=false")?;
    assert!(!args(&plaintext).iter().any(|a| a.starts_with("--tls")));
    assert!(plaintext["tlsSecret"].is_null());
    assert_eq!(plaintext["readinessProbe"]["grpc"]["port"], 8001);

    let chart = chart();
    let chart = chart.to_str().context("chart path")?;
    helm(&[
        "lint",
        "--strict",
        chart,
        "--set",
        "agent.tls.enabled=true,agent.tls.secretName=agent-tls,agent.tls.clientAuth=true",
    ])?;
    let output = exec(
        "helm",
        &["template", "bad", chart, "--set", "agent.tls.enabled=true"],
        None,
    )?;
    assert!(
        !output.status.success(),
        "TLS without a Secret was rendered"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("agent.tls.secretName"));
    Ok(())
}

#[test]
fn a_service_monitor_is_rendered_only_when_asked_for() -> Result<()> {
    let default = objects(&template("sm", "policyserve-system", &[])?)?;
    assert!(of_kind(&default, "ServiceMonitor").is_empty());
    let on = objects(&template(
        "sm",
        "policyserve-system",
        &["--set", "metrics.serviceMonitor.enabled=true"],
    )?)?;
    let monitors = of_kind(&on, "ServiceMonitor");
    assert_eq!(monitors.len(), 2, "operator and agents");
    let services = of_kind(&on, "Service");
    for monitor in monitors {
        let selector = &monitor["spec"]["selector"]["matchLabels"];
        let component = &selector["app.kubernetes.io/component"];
        assert!(
            services
                .iter()
                .any(|s| &s["metadata"]["labels"]["app.kubernetes.io/component"] == component),
            "no metrics Service for the {component} ServiceMonitor"
        );
    }
    Ok(())
}

#[tokio::test]
async fn rendered_manifests_pass_a_server_side_dry_run() -> Result<()> {
    let client = client().await?;
    let version = server_version(&client).await?;
    let namespace = test_namespace(&client, "chart-dry-run").await?;
    // The namespaced Roles of watchNamespace need the namespace to exist: watch the test's own.
    let narrowed = format!(
        "agent.gpu.enabled=true,agent.hostSys.enabled=true,operator.replicas=2,\
         operator.watchNamespace={namespace},operator.nodeSelectorFilter=pool=inference,\
         agent.probes.type=tcp,networkPolicy.enabled=true"
    );
    for values in [
        "",
        narrowed.as_str(),
        "rbac.create=false,operator.serviceAccount.create=false,agent.serviceAccount.create=false,\
         metrics.service.enabled=false,operator.leaderElection.enabled=false",
        "agent.tls.enabled=true,agent.tls.secretName=agent-tls,agent.tls.clientAuth=true",
    ] {
        let mut extra = vec!["--kube-version", version.as_str()];
        if !values.is_empty() {
            extra.extend(["--set", values]);
        }
        let release = unique_name("dry");
        let rendered = template(&release, &namespace, &extra)?;
        let applied = ok(
            "kubectl",
            &[
                "apply",
                "--dry-run=server",
                "--namespace",
                &namespace,
                "-f",
                "-",
            ],
            Some(&rendered),
        )
        .with_context(|| format!("dry run with values {values:?}"))?;
        let expected = objects(&rendered)?.len();
        assert_eq!(
            applied
                .lines()
                .filter(|l| l.contains("(server dry run)"))
                .count(),
            expected,
            "{applied}"
        );
    }
    Ok(())
}

async fn exists<K>(api: &Api<K>, name: &str) -> Result<bool>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api.get_opt(name).await?.is_some())
}

#[tokio::test]
async fn helm_installs_upgrades_and_uninstalls_the_chart_on_the_apiserver() -> Result<()> {
    let client = client().await?;
    let namespace = test_namespace(&client, "chart-install").await?;
    let release = unique_name("ps");
    let chart = chart();
    let chart = chart.to_str().context("chart path")?;
    let common = ["--namespace", namespace.as_str(), "--server-side=false"];

    // Install. CRDs come from the chart's crds/ unless an earlier test of the run put them
    // there (helm then leaves them); either way they are served afterwards.
    let notes = helm(&[&["install", release.as_str(), chart][..], &common].concat())?;
    assert!(
        notes.contains("kubectl get nodes -L policyserve.io/hardware-class"),
        "{notes}"
    );
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    for crd in CRDS {
        assert!(exists(&crds, crd).await?, "CRD {crd} missing after install");
    }
    let operator = format!("{release}-policyserve-operator");
    let agent = format!("{release}-policyserve-agent");
    let deployments = Api::<Deployment>::namespaced(client.clone(), &namespace);
    let daemonsets = Api::<DaemonSet>::namespaced(client.clone(), &namespace);
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), &namespace);
    let services = Api::<Service>::namespaced(client.clone(), &namespace);
    let roles = Api::<Role>::namespaced(client.clone(), &namespace);
    let cluster_roles = Api::<ClusterRole>::all(client.clone());
    let cluster_bindings = Api::<ClusterRoleBinding>::all(client.clone());
    let deployment = deployments.get(&operator).await?;
    assert!(exists(&daemonsets, &agent).await?);
    assert!(!exists(&daemonsets, &format!("{agent}-gpu")).await?);
    for account in [&operator, &agent] {
        assert!(
            exists(&accounts, account).await?,
            "ServiceAccount {account}"
        );
        // Cluster-scoped objects carry the release name, so releases do not clash.
        assert!(
            exists(&cluster_roles, account).await?,
            "ClusterRole {account}"
        );
        assert!(
            exists(&cluster_bindings, account).await?,
            "ClusterRoleBinding {account}"
        );
    }
    assert!(exists(&roles, &format!("{operator}-leader-election")).await?);
    assert!(exists(&services, &format!("{operator}-metrics")).await?);
    assert!(exists(&services, &format!("{agent}-metrics")).await?);
    let args = |d: &Deployment| -> Vec<String> {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .args
            .clone()
            .unwrap_or_default()
    };
    assert!(args(&deployment).contains(&"--log-format=text".to_owned()));
    assert!(args(&deployment).contains(&format!("--lease-name={operator}")));

    // Upgrade with changed values: the Deployment changes, the GPU agents appear.
    helm(
        &[
            &["upgrade", release.as_str(), chart][..],
            &common,
            &["--set", "operator.logFormat=json,agent.gpu.enabled=true"],
        ]
        .concat(),
    )?;
    let deployment = deployments.get(&operator).await?;
    assert!(args(&deployment).contains(&"--log-format=json".to_owned()));
    assert!(exists(&daemonsets, &format!("{agent}-gpu")).await?);
    let status = helm(&["status", release.as_str(), "--namespace", &namespace])?;
    assert!(status.contains("REVISION: 2"), "{status}");

    // Uninstall: every object of the release goes; the CRDs stay (Helm never deletes CRDs,
    // which would delete every PolicyService with them).
    helm(&["uninstall", release.as_str(), "--namespace", &namespace])?;
    assert!(!exists(&deployments, &operator).await?);
    assert!(!exists(&daemonsets, &agent).await?);
    assert!(!exists(&daemonsets, &format!("{agent}-gpu")).await?);
    for account in [&operator, &agent] {
        assert!(!exists(&accounts, account).await?);
        assert!(!exists(&cluster_roles, account).await?);
        assert!(!exists(&cluster_bindings, account).await?);
    }
    assert!(!exists(&services, &format!("{operator}-metrics")).await?);
    for crd in CRDS {
        assert!(exists(&crds, crd).await?, "CRD {crd} removed by uninstall");
    }
    Ok(())
}

/// (resource, verb) pairs a rendered Role or ClusterRole grants.
fn grants_of(role: &Value) -> BTreeSet<(String, String)> {
    let mut grants = BTreeSet::new();
    for rule in role["rules"].as_array().into_iter().flatten() {
        for resource in rule["resources"].as_array().into_iter().flatten() {
            for verb in rule["verbs"].as_array().into_iter().flatten() {
                let pair = (resource.as_str(), verb.as_str());
                if let (Some(resource), Some(verb)) = pair {
                    grants.insert((resource.to_owned(), verb.to_owned()));
                }
            }
        }
    }
    grants
}

#[test]
fn with_a_watch_namespace_only_nodes_stay_cluster_wide() -> Result<()> {
    let rendered = objects(&template(
        "narrow",
        "policyserve-system",
        &["--set", "operator.watchNamespace=robots"],
    )?)?;
    let role = |kind: &str, name: &str| -> Result<&Value> {
        of_kind(&rendered, kind)
            .into_iter()
            .find(|r| name_of(r) == name)
            .with_context(|| format!("no {kind} {name}"))
    };
    let pairs = |pairs: &[(&str, &str)]| -> BTreeSet<(String, String)> {
        pairs
            .iter()
            .map(|(r, v)| ((*r).to_owned(), (*v).to_owned()))
            .collect()
    };
    assert_eq!(
        grants_of(role("ClusterRole", "narrow-policyserve-agent")?),
        pairs(&[("nodes", "get"), ("nodes", "patch")])
    );
    assert_eq!(
        grants_of(role("ClusterRole", "narrow-policyserve-operator")?),
        pairs(&[("nodes", "get"), ("nodes", "list"), ("nodes", "watch")])
    );
    for name in ["narrow-policyserve-agent", "narrow-policyserve-operator"] {
        let namespaced = role("Role", name)?;
        assert_eq!(namespaced["metadata"]["namespace"], "robots", "{name}");
        let binding = of_kind(&rendered, "RoleBinding")
            .into_iter()
            .find(|b| name_of(b) == name)
            .with_context(|| format!("no RoleBinding {name}"))?;
        assert_eq!(binding["metadata"]["namespace"], "robots");
        assert_eq!(binding["subjects"][0]["namespace"], "policyserve-system");
    }
    let agent = grants_of(role("Role", "narrow-policyserve-agent")?);
    assert!(agent.contains(&("optimizationprofiles".into(), "watch".into())));
    assert!(agent.contains(&("configmaps".into(), "get".into())));
    let operator = grants_of(role("Role", "narrow-policyserve-operator")?);
    for resource in [
        "services",
        "endpointslices",
        "endpoints",
        "optimizationprofiles",
    ] {
        assert!(
            operator.contains(&(resource.into(), "create".into())),
            "{resource}"
        );
    }
    // The agents watch only where the operator plans.
    let daemonset = of_kind(&rendered, "DaemonSet")[0];
    let env = daemonset["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .context("env")?;
    assert!(
        env.iter()
            .any(|e| e["name"] == "POLICYSERVE_WATCH_NAMESPACE" && e["value"] == "robots"),
        "{env:?}"
    );
    Ok(())
}

#[test]
fn network_policies_admit_only_the_served_ports_when_enabled() -> Result<()> {
    let off = objects(&template("np", "policyserve-system", &[])?)?;
    assert!(of_kind(&off, "NetworkPolicy").is_empty());
    let rendered = objects(&template(
        "np",
        "policyserve-system",
        &[
            "--set",
            "networkPolicy.enabled=true",
            "--set-json",
            r#"networkPolicy.grpcFrom=[{"namespaceSelector":{"matchLabels":{"team":"robots"}}}]"#,
        ],
    )?)?;
    let policies = of_kind(&rendered, "NetworkPolicy");
    let ports = |name: &str| -> Vec<(u64, bool)> {
        let policy = policies.iter().find(|p| name_of(p) == name).unwrap();
        assert_eq!(
            policy["spec"]["policyTypes"],
            serde_json::json!(["Ingress"])
        );
        policy["spec"]["ingress"]
            .as_array()
            .unwrap()
            .iter()
            .map(|rule| {
                let port = rule["ports"][0]["port"].as_u64().unwrap();
                (port, rule.get("from").is_some())
            })
            .collect()
    };
    // gRPC only from the peers given; metrics from anyone, since none were given.
    assert_eq!(ports("np-policyserve-agent"), [(8001, true), (8002, false)]);
    assert_eq!(ports("np-policyserve-operator"), [(8080, false)]);
    // A TLS agent's plaintext health port is open too, for the kubelet's probes.
    let tls = objects(&template(
        "np",
        "policyserve-system",
        &[
            "--set",
            "networkPolicy.enabled=true,agent.tls.enabled=true,agent.tls.secretName=agent-tls",
        ],
    )?)?;
    let agent = of_kind(&tls, "NetworkPolicy")
        .into_iter()
        .find(|p| name_of(p) == "np-policyserve-agent")
        .context("agent NetworkPolicy")?;
    let open: Vec<u64> = agent["spec"]["ingress"]
        .as_array()
        .context("ingress")?
        .iter()
        .filter_map(|rule| rule["ports"][0]["port"].as_u64())
        .collect();
    assert_eq!(open, [8001, 8002, 8003]);
    Ok(())
}

#[test]
fn admission_policies_spell_the_agent_and_operator_contracts() -> Result<()> {
    let off = objects(&template("vap", "policyserve-system", &[])?)?;
    assert!(of_kind(&off, "ValidatingAdmissionPolicy").is_empty());
    let rendered = objects(&template(
        "vap",
        "policyserve-system",
        &["--set", "admissionPolicy.enabled=true"],
    )?)?;
    let policies = of_kind(&rendered, "ValidatingAdmissionPolicy");
    let bindings = of_kind(&rendered, "ValidatingAdmissionPolicyBinding");
    assert_eq!(policies.len(), 2);
    for policy in &policies {
        let binding = bindings
            .iter()
            .find(|b| b["spec"]["policyName"] == name_of(policy))
            .with_context(|| format!("no binding for {}", name_of(policy)))?;
        assert_eq!(
            binding["spec"]["validationActions"],
            serde_json::json!(["Deny"])
        );
        assert_eq!(policy["spec"]["failurePolicy"], "Fail");
    }
    let text = |name: &str| -> String {
        let policy = policies.iter().find(|p| name_of(p) == name).unwrap();
        serde_json::to_string(&policy["spec"]).unwrap()
    };
    // The keys the policies allow are the ones the code writes: spelled once in the crates,
    // checked here against the chart's copy.
    let agent = text("vap-policyserve-agent-own-node");
    for needle in [
        "system:serviceaccount:policyserve-system:vap-policyserve-agent",
        "authentication.kubernetes.io/node-name",
        policyserve_crds::labels::CAPABILITY_LABEL_PREFIX,
        policyserve_crds::labels::HARDWARE_CLASS_LABEL,
        policyserve_crds::HARDWARE_ANNOTATION,
    ] {
        assert!(
            agent.contains(needle),
            "agent policy lacks {needle}: {agent}"
        );
    }
    let operator = text("vap-policyserve-operator-own-services");
    for needle in [
        "system:serviceaccount:policyserve-system:vap-policyserve-operator",
        &format!(
            "'app.kubernetes.io/managed-by'] == '{}'",
            policyserve_operator::FIELD_MANAGER
        ),
    ] {
        assert!(
            operator.contains(needle),
            "operator policy lacks {needle}: {operator}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_test_apiserver_cannot_check_admission_policies() -> Result<()> {
    // Kubernetes 1.20 has no admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy: the
    // policies are rendered and read above, and can be dry-run only on 1.30+ clusters.
    let client = client().await?;
    let namespace = test_namespace(&client, "chart-vap").await?;
    let rendered = template(
        &unique_name("vap"),
        &namespace,
        &[
            "--set",
            "admissionPolicy.enabled=true",
            "-s",
            "templates/admission-policy.yaml",
        ],
    )?;
    let refused = exec(
        "kubectl",
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&rendered),
    )?;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("no matches for kind \"ValidatingAdmissionPolicy\""),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn the_apiserver_grants_exactly_the_narrowed_rbac() -> Result<()> {
    let client = client().await?;
    let release_ns = test_namespace(&client, "chart-rbac").await?;
    let watched = test_namespace(&client, "chart-rbac-watched").await?;
    let release = unique_name("rbac");
    let rendered = template(
        &release,
        &release_ns,
        &[
            "--set",
            &format!("operator.watchNamespace={watched}"),
            "-s",
            "templates/agent-rbac.yaml",
            "-s",
            "templates/operator-rbac.yaml",
        ],
    )?;
    ok("kubectl", &["apply", "-f", "-"], Some(&rendered))?;
    // What the RBAC authorizer answers each ServiceAccount: the grants, not the YAML.
    let can = |who: &str, verb: &str, resource: &str, namespace: Option<&str>| -> Result<bool> {
        let user = format!("--as=system:serviceaccount:{release_ns}:{release}-policyserve-{who}");
        let mut args = vec!["auth", "can-i", verb, resource, user.as_str()];
        if let Some(namespace) = namespace {
            args.extend(["-n", namespace]);
        }
        Ok(exec("kubectl", &args, None)?.status.success())
    };
    let other = Some("default");
    let checks: [(&str, &str, &str, Option<&str>, bool); 17] = [
        ("agent", "get", "configmaps", Some(&watched), true),
        ("agent", "get", "configmaps", other, false),
        ("agent", "list", "configmaps", Some(&watched), false),
        (
            "agent",
            "watch",
            "optimizationprofiles.policyserve.io",
            Some(&watched),
            true,
        ),
        (
            "agent",
            "watch",
            "optimizationprofiles.policyserve.io",
            other,
            false,
        ),
        ("agent", "patch", "nodes", None, true),
        ("agent", "list", "nodes", None, false),
        (
            "agent",
            "create",
            "leases.coordination.k8s.io",
            Some(&release_ns),
            true,
        ),
        (
            "agent",
            "create",
            "leases.coordination.k8s.io",
            Some(&watched),
            false,
        ),
        ("operator", "create", "services", Some(&watched), true),
        ("operator", "create", "services", other, false),
        // The finalizer deletes a PolicyService's slices by label, in one call.
        (
            "operator",
            "deletecollection",
            "endpointslices.discovery.k8s.io",
            Some(&watched),
            true,
        ),
        (
            "operator",
            "create",
            "endpointslices.discovery.k8s.io",
            other,
            false,
        ),
        (
            "operator",
            "patch",
            "policyservices.policyserve.io",
            Some(&watched),
            true,
        ),
        (
            "operator",
            "list",
            "policyservices.policyserve.io",
            other,
            false,
        ),
        ("operator", "watch", "nodes", None, true),
        ("operator", "patch", "nodes", None, false),
    ];
    let mut wrong = Vec::new();
    for (who, verb, resource, namespace, expected) in checks {
        if can(who, verb, resource, namespace)? != expected {
            wrong.push(format!(
                "{who} {verb} {resource} in {namespace:?}: expected {expected}"
            ));
        }
    }
    ok("kubectl", &["delete", "-f", "-"], Some(&rendered))?;
    assert!(wrong.is_empty(), "{wrong:#?}");
    Ok(())
}
