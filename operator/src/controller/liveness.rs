//! Which nodes' agents are alive: each agent renews a Lease `policyserve-agent-<node>` every
//! 10 s, and a node whose Lease is older than 40 s is not serving, whatever its profiles say
//! (an agent that died cannot update them, and agents rewrite them only when figures move).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use policyserve_crds::{AGENT_LEASE_TIMEOUT_SECONDS, NODE_LABEL};

/// Each node's last Lease renewal.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Liveness {
    renewed: BTreeMap<String, Timestamp>,
    now: Timestamp,
}

impl Liveness {
    /// The agents' Leases as of `now`; a Lease names its node in the `policyserve.io/node`
    /// label.
    pub fn from_leases(leases: &[Arc<Lease>], now: Timestamp) -> Self {
        let renewed = leases
            .iter()
            .filter_map(|lease| {
                let node = lease.labels().get(NODE_LABEL)?.clone();
                let renewed = lease.spec.as_ref()?.renew_time.as_ref()?.0;
                Some((node, renewed))
            })
            .collect();
        Self { renewed, now }
    }

    /// Every one of `nodes` renewed at `now`.
    #[cfg(test)]
    pub fn all<'a>(nodes: impl IntoIterator<Item = &'a str>, now: Timestamp) -> Self {
        Self {
            renewed: nodes.into_iter().map(|n| (n.to_owned(), now)).collect(),
            now,
        }
    }

    /// Each of `renewals` renewed its Lease at the time given, seen at `now`.
    #[cfg(test)]
    pub fn renewed<'a>(
        renewals: impl IntoIterator<Item = (&'a str, Timestamp)>,
        now: Timestamp,
    ) -> Self {
        Self {
            renewed: renewals
                .into_iter()
                .map(|(n, at)| (n.to_owned(), at))
                .collect(),
            now,
        }
    }

    fn timeout() -> jiff::SignedDuration {
        jiff::SignedDuration::from_secs(i64::try_from(AGENT_LEASE_TIMEOUT_SECONDS).unwrap_or(40))
    }

    /// Whether `node`'s agent renewed its Lease within the timeout.
    pub fn is_live(&self, node: &str) -> bool {
        self.renewed
            .get(node)
            .is_some_and(|at| self.now.duration_since(*at) <= Self::timeout())
    }

    /// Whether `node`'s agent had a Lease and stopped renewing it: the agent is gone, not
    /// merely not started yet.
    pub fn is_lost(&self, node: &str) -> bool {
        self.renewed.contains_key(node) && !self.is_live(node)
    }

    /// How long until the first of `nodes` that is live now stops being live, if none renews:
    /// when to look again, since no event announces an agent that stopped.
    pub fn next_expiry<'a>(&self, nodes: impl IntoIterator<Item = &'a str>) -> Option<Duration> {
        nodes
            .into_iter()
            .filter(|node| self.is_live(node))
            .filter_map(|node| self.renewed.get(node))
            .map(|at| Self::timeout() - self.now.duration_since(*at))
            .filter_map(|left| Duration::try_from(left).ok())
            .min()
    }

    /// Seconds since `node`'s agent last renewed its Lease, when it has one.
    pub fn age_seconds(&self, node: &str) -> Option<i64> {
        self.renewed
            .get(node)
            .map(|at| self.now.duration_since(*at).as_secs())
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    use super::*;

    fn lease(node: &str, renewed: Timestamp) -> Arc<Lease> {
        let mut lease = Lease::default();
        lease.metadata.labels = Some(BTreeMap::from([(NODE_LABEL.into(), node.into())]));
        lease.spec = Some(k8s_openapi::api::coordination::v1::LeaseSpec {
            renew_time: Some(MicroTime(renewed)),
            ..Default::default()
        });
        Arc::new(lease)
    }

    #[test]
    fn a_node_is_live_until_its_lease_is_forty_seconds_old() {
        let now = Timestamp::from_second(1_700_000_100).unwrap();
        let at = |seconds_ago: i64| now - jiff::SignedDuration::from_secs(seconds_ago);
        let liveness = Liveness::from_leases(&[lease("fresh", at(5)), lease("stale", at(41))], now);
        assert!(liveness.is_live("fresh"));
        assert!(!liveness.is_live("stale"));
        assert!(!liveness.is_live("never"), "no Lease, no agent");
        assert_eq!(
            liveness.next_expiry(["fresh", "stale", "never"]),
            Some(Duration::from_secs(35))
        );
        assert_eq!(liveness.age_seconds("stale"), Some(41));
    }
}
