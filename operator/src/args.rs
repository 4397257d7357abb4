//! Command-line flags, each with an environment fallback so a Deployment can set them either way.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use clap::builder::BoolishValueParser;

use crate::controller::ControllerConfig;
use policyserve_runtime::LogFormat;

/// Reconciles PolicyServices into per-node OptimizationProfiles, decides how many nodes serve,
/// and keeps each PolicyService's status conditions true to what the agents measured.
#[derive(Clone, Debug, Parser)]
#[command(name = "policyserve-operator", version)]
pub struct Args {
    /// Kubeconfig file; without it the in-cluster service account is used, then ~/.kube/config.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Watch PolicyServices in this namespace only; all namespaces when unset.
    #[arg(long, env = "POLICYSERVE_WATCH_NAMESPACE")]
    pub namespace: Option<String>,

    /// Consider only Nodes matching this label selector (`key=value,other`), on top of the
    /// `policyserve.io/hardware-class` label every agent sets.
    #[arg(long, env = "POLICYSERVE_NODE_SELECTOR")]
    pub node_selector: Option<String>,

    /// Address for Prometheus metrics (/metrics) and probes (/healthz, /readyz).
    #[arg(long, env = "POLICYSERVE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// Run only while holding the coordination.k8s.io Lease, so several replicas are safe.
    /// `--leader-election=false` for a single replica or a local run.
    #[arg(
        long,
        env = "POLICYSERVE_LEADER_ELECTION",
        default_value = "true",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new(),
    )]
    pub leader_election: bool,

    /// Namespace of the leader Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "policyserve-system")]
    pub lease_namespace: String,

    /// Namespace of the agents' Leases (the agent DaemonSet's); defaults to the leader
    /// Lease's namespace, where the chart installs both.
    #[arg(long, env = "POLICYSERVE_AGENT_NAMESPACE")]
    pub agent_namespace: Option<String>,

    /// Name of the leader Lease.
    #[arg(
        long,
        env = "POLICYSERVE_LEASE_NAME",
        default_value = "policyserve-operator"
    )]
    pub lease_name: String,

    /// This replica's identity in the Lease; the pod name in a cluster, else host name and pid.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Seconds a leader's Lease stays valid without renewal (a crashed leader's successor
    /// waits this long).
    #[arg(long, env = "POLICYSERVE_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,

    /// Seconds each agent may spend tuning, written into every OptimizationProfile.
    #[arg(long, env = "POLICYSERVE_TUNING_BUDGET_SECONDS", default_value_t = 30)]
    pub tuning_budget_seconds: u32,

    /// Scale down only after the lower replica count has been recommended this long
    /// (`60s`, `5m`); scale-up is immediate.
    #[arg(long, env = "POLICYSERVE_SCALE_DOWN_STABILIZATION", default_value = "60s",
          value_parser = humantime::parse_duration)]
    pub scale_down_stabilization: Duration,

    /// Re-check every PolicyService this often even without a change (drift repair).
    #[arg(long, env = "POLICYSERVE_RESYNC_INTERVAL", default_value = "5m",
          value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,

    /// PolicyServices reconciled at once.
    #[arg(long, env = "POLICYSERVE_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,

    /// Log filter in RUST_LOG syntax.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_filter: String,

    /// Log line format.
    #[arg(
        long,
        env = "POLICYSERVE_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

impl Args {
    /// The controller's settings from these flags.
    pub fn controller_config(&self) -> ControllerConfig {
        ControllerConfig {
            agent_namespace: self
                .agent_namespace
                .clone()
                .unwrap_or_else(|| self.lease_namespace.clone()),
            namespace: self.namespace.clone(),
            node_selector: self.node_selector.clone(),
            tuning_budget_seconds: self.tuning_budget_seconds,
            scale_down_stabilization: self.scale_down_stabilization,
            resync_interval: self.resync_interval,
            concurrency: self.concurrency,
            instance: self.identity.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_run_with_leader_election_on_all_namespaces() {
        let args = Args::try_parse_from(["policyserve-operator"]).unwrap();
        assert!(args.leader_election);
        assert_eq!(args.namespace, None);
        assert_eq!(args.metrics_addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(args.scale_down_stabilization, Duration::from_secs(60));
        assert_eq!(args.tuning_budget_seconds, 30);
    }

    #[test]
    fn leader_election_can_be_switched_off_with_an_explicit_false() {
        for off in [
            ["policyserve-operator", "--leader-election=false"],
            ["policyserve-operator", "--leader-election=0"],
        ] {
            assert!(!Args::try_parse_from(off).unwrap().leader_election);
        }
        let on = Args::try_parse_from(["policyserve-operator", "--leader-election"]).unwrap();
        assert!(on.leader_election);
    }

    #[test]
    fn durations_take_human_units() {
        let args = Args::try_parse_from([
            "policyserve-operator",
            "--scale-down-stabilization=2s",
            "--resync-interval=10m",
        ])
        .unwrap();
        assert_eq!(args.scale_down_stabilization, Duration::from_secs(2));
        assert_eq!(args.resync_interval, Duration::from_secs(600));
    }
}
