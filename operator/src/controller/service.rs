//! The stable name clients use, computed without I/O: one selector-less Service per
//! PolicyService and the endpoints behind it, one per planned node whose agent reports Serving
//! and an address.
//!
//! Agents are a DaemonSet serving many models, so a Pod selector cannot say which of them serve
//! this one; the operator writes the endpoints itself. On current Kubernetes that is
//! `discovery.k8s.io/v1` EndpointSlices (one per address family and port, as the API requires);
//! on clusters without that API (before 1.21) it is the legacy core/v1 Endpoints object named
//! like the Service, which kube-proxy and cluster DNS read there.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as CoreEndpointPort, EndpointSubset, Endpoints, Service,
    ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use policyserve_crds::{AGENT_GRPC_PORT, OptimizationProfile, POLICY_SERVICE_LABEL};

use super::apply::FIELD_MANAGER;
use super::desired::is_serving;
use super::liveness::Liveness;
use super::validate::Validated;

/// `app.kubernetes.io/managed-by` on the Service and its endpoints.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The label that ties an EndpointSlice to its Service (read by kube-proxy and DNS).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label that keeps the EndpointSlice controller (and mirroring) off our slices.
pub const SLICE_MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Value of [`SLICE_MANAGED_BY_LABEL`] on the slices the operator writes.
pub const SLICE_MANAGER: &str = "policyserve.io/operator";
/// Name of the Service port and of every endpoint port (they are matched by name).
pub const PORT_NAME: &str = "grpc";
/// `appProtocol` of the ports: the agents speak gRPC (KServe V2).
pub const APP_PROTOCOL: &str = "grpc";
/// `spec.clusterIP` of a headless Service.
pub const HEADLESS: &str = "None";

/// Which API carries the endpoints on this cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointsApi {
    /// `discovery.k8s.io/v1` EndpointSlices (Kubernetes 1.21 and later).
    EndpointSlice,
    /// The legacy core/v1 Endpoints object (clusters without `discovery.k8s.io/v1`).
    Endpoints,
}

impl EndpointsApi {
    /// The resource's name, for logs and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EndpointSlice => "discovery.k8s.io/v1 EndpointSlice",
            Self::Endpoints => "core/v1 Endpoints",
        }
    }
}

/// A serving agent's address for this PolicyService.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    /// The parsed address; family decides the slice.
    pub ip: IpAddr,
    /// The agent's gRPC port.
    pub port: i32,
    /// The node the agent runs on.
    pub node: String,
}

/// The endpoints objects for one PolicyService, in the form the cluster serves.
#[derive(Clone, Debug, PartialEq)]
pub enum EndpointObjects {
    /// One slice per (address family, port), names sorted.
    Slices(Vec<EndpointSlice>),
    /// The one Endpoints object named like the Service.
    Endpoints(Box<Endpoints>),
}

/// Everything the apply step writes so that clients reach a PolicyService.
#[derive(Clone, Debug, PartialEq)]
pub struct Published {
    /// The selector-less Service.
    pub service: Service,
    /// Its endpoints.
    pub endpoints: EndpointObjects,
}

/// The Service name for a PolicyService. Service names are DNS-1035 labels (lowercase letters,
/// digits and `-`, starting with a letter, at most 63 characters) while PolicyService names may
/// be longer DNS subdomains; a name that already is a label is used as it is, others are
/// rewritten (dots to dashes, a `ps-` prefix before a leading digit, cut with a stable hash).
pub fn service_name(policy_service: &str) -> String {
    const MAX: usize = 63;
    if is_dns1035_label(policy_service) {
        return policy_service.to_owned();
    }
    let mut name: String = policy_service
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .to_ascii_lowercase();
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name.insert_str(0, "ps-");
    }
    policyserve_crds::shorten(name.trim_end_matches('-'), policy_service, MAX)
        .trim_end_matches('-')
        .to_owned()
}

fn is_dns1035_label(name: &str) -> bool {
    name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The serving agents among the planned nodes' profiles: Serving=True, a live agent (its Lease
/// renewed), and an endpoint whose
/// address is an IP the API accepts in endpoints. A host name, a loopback, unspecified,
/// link-local or multicast address is skipped (the apiserver refuses the whole object for one
/// such address, which would hide every other agent). Sorted and free of duplicates, so the
/// objects built from them are stable.
pub fn backends<'a>(
    profiles: impl IntoIterator<Item = &'a OptimizationProfile>,
    planned_nodes: &[&str],
    liveness: &Liveness,
) -> Vec<Backend> {
    let mut backends: Vec<Backend> = profiles
        .into_iter()
        .filter(|p| planned_nodes.contains(&p.spec.node_name.as_str()))
        .filter(|p| is_serving(p, liveness))
        .filter_map(|p| {
            let endpoint = p.status.as_ref()?.endpoint.as_ref()?;
            let ip = endpoint.address.trim().parse::<IpAddr>().ok()?;
            (publishable(&ip) && (1..=65535).contains(&endpoint.port)).then(|| Backend {
                ip,
                port: endpoint.port,
                node: p.spec.node_name.clone(),
            })
        })
        .collect();
    backends.sort();
    backends.dedup_by(|a, b| a.ip == b.ip && a.port == b.port);
    backends
}

/// Whether the apiserver accepts the address in Endpoints and EndpointSlices.
fn publishable(ip: &IpAddr) -> bool {
    let special = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    !(special || ip.is_loopback() || ip.is_unspecified() || ip.is_multicast())
}

/// The Service, its endpoints in the form `api` names, for a PolicyService and its serving
/// agents.
pub fn published(ps: &Validated, backends: &[Backend], api: EndpointsApi) -> Published {
    let service = service(ps);
    let endpoints = match api {
        EndpointsApi::EndpointSlice => EndpointObjects::Slices(endpoint_slices(ps, backends)),
        EndpointsApi::Endpoints => EndpointObjects::Endpoints(Box::new(endpoints(ps, backends))),
    };
    Published { service, endpoints }
}

/// Name, namespace, labels and controller owner reference shared by all three kinds.
fn metadata(ps: &Validated, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(ps.namespace.to_owned()),
        labels: Some(BTreeMap::from([
            (MANAGED_BY_LABEL.to_owned(), FIELD_MANAGER.to_owned()),
            (POLICY_SERVICE_LABEL.to_owned(), ps.name.to_owned()),
        ])),
        owner_references: Some(vec![ps.owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// The selector-less headless Service `service_name(<policyservice>)`, port `grpc` 8001.
///
/// Headless, so its DNS name resolves to every serving agent: gRPC clients keep one HTTP/2
/// connection for many requests, and a cluster IP would balance only those connections (one
/// agent gets all of a client's requests), while a client resolving the agents balances each
/// request (gRPC's `round_robin`). It also takes no address from the cluster's Service range,
/// which 1,000 PolicyServices exhausted on the test cluster's /24.
pub fn service(ps: &Validated) -> Service {
    let port = i32::from(AGENT_GRPC_PORT);
    Service {
        metadata: metadata(ps, service_name(ps.name)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(HEADLESS.into()),
            // No selector: the endpoints are written by the operator, not derived from Pods.
            selector: None,
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.into()),
                port,
                // Informational without a selector (the endpoint ports are what kube-proxy
                // uses), but says where the agents listen.
                target_port: Some(IntOrString::Int(port)),
                protocol: Some("TCP".into()),
                app_protocol: Some(APP_PROTOCOL.into()),
                ..ServicePort::default()
            }]),
            // On a dual-stack cluster the Service's DNS name answers with agents of both
            // families; single-stack clusters (and 1.20, which drops the field) have one.
            ip_family_policy: Some("PreferDualStack".into()),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn family(ip: &IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

/// The EndpointSlices: one per (address family, port) among the backends, named
/// `<service>-policyserve-<ipv4|ipv6>-<port>`; with no backend, one empty IPv4 slice on the
/// agents' port, so the Service's slice exists (and says "no endpoints") from the start.
pub fn endpoint_slices(ps: &Validated, backends: &[Backend]) -> Vec<EndpointSlice> {
    let service = service_name(ps.name);
    let mut groups: BTreeMap<(&'static str, i32), Vec<&Backend>> = BTreeMap::new();
    for backend in backends {
        groups
            .entry((family(&backend.ip), backend.port))
            .or_default()
            .push(backend);
    }
    if groups.is_empty() {
        groups.insert(("IPv4", i32::from(AGENT_GRPC_PORT)), Vec::new());
    }
    groups
        .into_iter()
        .map(|((family, port), members)| {
            let name = format!(
                "{service}-policyserve-{}-{port}",
                family.to_ascii_lowercase()
            );
            let mut metadata = metadata(ps, name);
            let labels = metadata.labels.get_or_insert_with(BTreeMap::new);
            labels.insert(SERVICE_NAME_LABEL.to_owned(), service.clone());
            labels.insert(SLICE_MANAGED_BY_LABEL.to_owned(), SLICE_MANAGER.to_owned());
            EndpointSlice {
                metadata,
                address_type: family.to_owned(),
                endpoints: members
                    .into_iter()
                    .map(|b| Endpoint {
                        addresses: vec![b.ip.to_string()],
                        conditions: Some(EndpointConditions {
                            ready: Some(true),
                            serving: Some(true),
                            terminating: Some(false),
                        }),
                        node_name: Some(b.node.clone()),
                        ..Endpoint::default()
                    })
                    .collect(),
                ports: Some(vec![EndpointPort {
                    name: Some(PORT_NAME.into()),
                    port: Some(port),
                    protocol: Some("TCP".into()),
                    app_protocol: Some(APP_PROTOCOL.into()),
                }]),
            }
        })
        .collect()
}

/// The legacy Endpoints object named like the Service: one subset per port, both address
/// families in it (core/v1 Endpoints is not split by family).
pub fn endpoints(ps: &Validated, backends: &[Backend]) -> Endpoints {
    let mut by_port: BTreeMap<i32, Vec<&Backend>> = BTreeMap::new();
    for backend in backends {
        by_port.entry(backend.port).or_default().push(backend);
    }
    let subsets: Vec<EndpointSubset> = by_port
        .into_iter()
        .map(|(port, members)| EndpointSubset {
            addresses: Some(
                members
                    .into_iter()
                    .map(|b| EndpointAddress {
                        ip: b.ip.to_string(),
                        node_name: Some(b.node.clone()),
                        ..EndpointAddress::default()
                    })
                    .collect(),
            ),
            not_ready_addresses: None,
            ports: Some(vec![CoreEndpointPort {
                name: Some(PORT_NAME.into()),
                port,
                protocol: Some("TCP".into()),
                app_protocol: Some(APP_PROTOCOL.into()),
            }]),
        })
        .collect();
    Endpoints {
        metadata: metadata(ps, service_name(ps.name)),
        subsets: (!subsets.is_empty()).then_some(subsets),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::{PolicyServiceBuilder, ProfileBuilder};
    use crate::controller::validate;
    use policyserve_crds::PolicyService;

    fn lander() -> PolicyService {
        PolicyServiceBuilder::new("lander").build()
    }

    fn serving_at(ps: &PolicyService, node: &str, address: &str, port: i32) -> OptimizationProfile {
        ProfileBuilder::for_node(ps, node)
            .serving()
            .endpoint(address, port)
            .build()
    }

    #[test]
    fn backends_are_the_serving_planned_profiles_with_an_ip_address() {
        let ps = lander();
        let profiles = [
            serving_at(&ps, "a", "10.0.0.5", 8001),
            serving_at(&ps, "b", "fd00::7", 8001),
            // Loaded but not serving yet: left out.
            ProfileBuilder::for_node(&ps, "c")
                .endpoint("10.0.0.6", 8001)
                .build(),
            // Not an IP, or one the API refuses in endpoints.
            serving_at(&ps, "d", "agent.example", 8001),
            serving_at(&ps, "h", "127.0.0.2", 8001),
            serving_at(&ps, "i", "fe80::1", 8001),
            serving_at(&ps, "j", "0.0.0.0", 8001),
            // Serving, but no endpoint reported.
            ProfileBuilder::for_node(&ps, "e").serving().build(),
            // Serving but being scaled away: not planned any more.
            serving_at(&ps, "f", "10.0.0.8", 8001),
            serving_at(&ps, "g", "10.0.0.9", 0),
        ];
        let found = backends(
            &profiles,
            &["a", "b", "c", "d", "e", "g", "h", "i", "j"],
            &Liveness::all(
                ["a", "b", "c", "d", "e", "g", "h", "i", "j"],
                jiff::Timestamp::UNIX_EPOCH,
            ),
        );
        let found: Vec<(String, &str)> = found
            .iter()
            .map(|b| (b.ip.to_string(), b.node.as_str()))
            .collect();
        assert_eq!(
            found,
            [("10.0.0.5".to_owned(), "a"), ("fd00::7".to_owned(), "b")]
        );
    }

    #[test]
    fn the_service_is_selector_less_headless_on_the_grpc_port_and_owned() {
        let service = service(&validate(&lander()).unwrap());
        assert_eq!(service.metadata.name.as_deref(), Some("lander"));
        assert_eq!(service.metadata.namespace.as_deref(), Some("robots"));
        let labels = service.metadata.labels.clone().unwrap();
        assert_eq!(labels[MANAGED_BY_LABEL], "policyserve-operator");
        assert_eq!(labels[POLICY_SERVICE_LABEL], "lander");
        let owner = &service.metadata.owner_references.clone().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("PolicyService", "lander", Some(true))
        );
        let spec = service.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"), "headless");
        assert_eq!(spec.selector, None);
        let port = &spec.ports.unwrap()[0];
        assert_eq!(port.name.as_deref(), Some("grpc"));
        assert_eq!(port.port, 8001);
        assert_eq!(port.target_port, Some(IntOrString::Int(8001)));
        assert_eq!(port.app_protocol.as_deref(), Some("grpc"));
    }

    #[test]
    fn slices_are_split_by_address_family_and_carry_the_profile_port() {
        let ps = lander();
        let profiles = [
            serving_at(&ps, "a", "10.0.0.5", 8001),
            serving_at(&ps, "b", "10.0.0.6", 8001),
            serving_at(&ps, "c", "fd00::7", 8001),
            serving_at(&ps, "d", "10.0.0.7", 9001),
        ];
        let found = backends(
            &profiles,
            &["a", "b", "c", "d"],
            &Liveness::all(["a", "b", "c", "d"], jiff::Timestamp::UNIX_EPOCH),
        );
        let slices = endpoint_slices(&validate(&ps).unwrap(), &found);
        let summary: Vec<(String, &str, i32, Vec<String>)> = slices
            .iter()
            .map(|s| {
                (
                    s.metadata.name.clone().unwrap(),
                    s.address_type.as_str(),
                    s.ports.as_ref().unwrap()[0].port.unwrap(),
                    s.endpoints.iter().map(|e| e.addresses[0].clone()).collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "lander-policyserve-ipv4-8001".to_owned(),
                    "IPv4",
                    8001,
                    vec!["10.0.0.5".to_owned(), "10.0.0.6".to_owned()]
                ),
                (
                    "lander-policyserve-ipv4-9001".to_owned(),
                    "IPv4",
                    9001,
                    vec!["10.0.0.7".to_owned()]
                ),
                (
                    "lander-policyserve-ipv6-8001".to_owned(),
                    "IPv6",
                    8001,
                    vec!["fd00::7".to_owned()]
                ),
            ]
        );
    }

    #[test]
    fn a_slice_names_its_service_its_manager_and_each_endpoints_node() {
        let ps = lander();
        let found = backends(
            &[serving_at(&ps, "node-a", "10.0.0.5", 8001)],
            &["node-a"],
            &Liveness::all(["node-a"], jiff::Timestamp::UNIX_EPOCH),
        );
        let slice = &endpoint_slices(&validate(&ps).unwrap(), &found)[0];
        let labels = slice.metadata.labels.clone().unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "lander");
        assert_eq!(labels[SLICE_MANAGED_BY_LABEL], "policyserve.io/operator");
        assert_eq!(labels[MANAGED_BY_LABEL], "policyserve-operator");
        assert_eq!(labels[POLICY_SERVICE_LABEL], "lander");
        assert_eq!(
            slice.metadata.owner_references.as_ref().unwrap()[0].controller,
            Some(true)
        );
        let endpoint = &slice.endpoints[0];
        assert_eq!(endpoint.node_name.as_deref(), Some("node-a"));
        let conditions = endpoint.conditions.clone().unwrap();
        assert_eq!(
            (conditions.ready, conditions.serving, conditions.terminating),
            (Some(true), Some(true), Some(false))
        );
        let port = &slice.ports.as_ref().unwrap()[0];
        assert_eq!(
            (
                port.name.as_deref(),
                port.protocol.as_deref(),
                port.app_protocol.as_deref()
            ),
            (Some("grpc"), Some("TCP"), Some("grpc"))
        );
    }

    #[test]
    fn without_serving_agents_there_is_one_empty_ipv4_slice_and_an_endpoints_without_subsets() {
        let ps = lander();
        let slices = endpoint_slices(&validate(&ps).unwrap(), &[]);
        assert_eq!(slices.len(), 1);
        assert_eq!(
            slices[0].metadata.name.as_deref(),
            Some("lander-policyserve-ipv4-8001")
        );
        assert!(slices[0].endpoints.is_empty());
        assert_eq!(endpoints(&validate(&ps).unwrap(), &[]).subsets, None);
    }

    #[test]
    fn the_legacy_endpoints_is_named_like_the_service_with_a_subset_per_port() {
        let ps = lander();
        let profiles = [
            serving_at(&ps, "a", "10.0.0.5", 8001),
            serving_at(&ps, "b", "fd00::7", 8001),
            serving_at(&ps, "c", "10.0.0.7", 9001),
        ];
        let found = backends(
            &profiles,
            &["a", "b", "c"],
            &Liveness::all(["a", "b", "c"], jiff::Timestamp::UNIX_EPOCH),
        );
        let endpoints = endpoints(&validate(&ps).unwrap(), &found);
        assert_eq!(endpoints.metadata.name.as_deref(), Some("lander"));
        type Addresses = Vec<(String, Option<String>)>;
        let subsets: Vec<(i32, Addresses)> = endpoints
            .subsets
            .unwrap()
            .into_iter()
            .map(|s| {
                (
                    s.ports.unwrap()[0].port,
                    s.addresses
                        .unwrap()
                        .into_iter()
                        .map(|a| (a.ip, a.node_name))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            subsets,
            [
                (
                    8001,
                    vec![
                        ("10.0.0.5".to_owned(), Some("a".to_owned())),
                        ("fd00::7".to_owned(), Some("b".to_owned()))
                    ]
                ),
                (9001, vec![("10.0.0.7".to_owned(), Some("c".to_owned()))]),
            ]
        );
    }

    #[test]
    fn the_api_decides_which_endpoints_objects_are_published() {
        let ps = lander();
        let new = published(&validate(&ps).unwrap(), &[], EndpointsApi::EndpointSlice);
        assert!(matches!(new.endpoints, EndpointObjects::Slices(_)));
        let old = published(&validate(&ps).unwrap(), &[], EndpointsApi::Endpoints);
        assert!(matches!(old.endpoints, EndpointObjects::Endpoints(_)));
        assert_eq!(new.service, old.service);
    }

    #[test]
    fn service_names_are_dns_labels_derived_from_the_policy_service_name() {
        assert_eq!(service_name("lander"), "lander");
        assert_eq!(service_name("lander.v2"), "lander-v2");
        assert_eq!(service_name("2d-walker"), "ps-2d-walker");
        let long = format!("{}.x", "a".repeat(80));
        let cut = service_name(&long);
        assert!(cut.len() <= 63, "{cut}");
        assert!(is_dns1035_label(&cut), "{cut}");
        assert_eq!(cut, service_name(&long));
        assert_ne!(cut, service_name(&format!("{}.y", "a".repeat(80))));
    }
}
