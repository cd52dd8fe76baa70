//! Which endpoints each kind of traffic to a service port reaches on this node: the traffic
//! policies, derived once here (as kube-proxy derives them once per service port in
//! `syncProxyRules`) and read by every proxy backend.

/// One of the two endpoint sets [`super::categorize`] selects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndpointSet {
    /// The Cluster-policy endpoints (topology applied, terminating fallback).
    #[default]
    Cluster,
    /// The Local-policy endpoints (this node's ready, or serving-terminating ones).
    Local,
}

/// The traffic policies of one service port and family, resolved for this node.
///
/// "Internal" traffic is sent to the cluster IP; "external" traffic arrives on a node
/// port, a load-balancer IP or an external IP. The iptables and nftables backends follow
/// these fields exactly; the IPVS backend's differences are named on the methods that
/// state them ([`Traffic::ipvs_external`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Traffic {
    /// A usable endpoint exists somewhere in the cluster. When false, traffic of every kind
    /// is rejected (ICMP port unreachable / TCP reset).
    pub has_endpoints: bool,
    /// Reachable from outside in this family: a node port, load-balancer IPs or external
    /// IPs.
    pub externally_accessible: bool,
    /// Internal traffic goes to this set (`internalTrafficPolicy`).
    pub internal: EndpointSet,
    /// External traffic goes to this set (`externalTrafficPolicy`).
    pub external: EndpointSet,
    /// Internal traffic has an endpoint to go to; when false while
    /// [`has_endpoints`](Self::has_endpoints), it is dropped ("has no local endpoints").
    pub internal_reachable: bool,
    /// External traffic has an endpoint to go to; when false while
    /// [`has_endpoints`](Self::has_endpoints), it is dropped.
    pub external_reachable: bool,
    /// Some traffic uses the Cluster set and it is not empty: its dispatch (kube-proxy's
    /// `KUBE-SVC-*` chain) exists.
    pub uses_cluster_set: bool,
    /// Some traffic uses the Local set and it is not empty (`KUBE-SVL-*`).
    pub uses_local_set: bool,
    /// The load-balancer IPs of this family are restricted to source ranges. kube-proxy's
    /// nftables mode filters on this alone (its `firewall` chain comes first, with or
    /// without endpoints).
    pub source_ranges: bool,
    /// External traffic to the load-balancer IPs passes a firewall of source ranges in
    /// kube-proxy's iptables mode (`KUBE-FW-*`): [`source_ranges`](Self::source_ranges)
    /// and endpoints to reach (without endpoints the traffic is rejected first).
    pub firewall: bool,
}

/// The inputs [`Traffic::derive`] needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TrafficInputs {
    pub(crate) has_endpoints: bool,
    pub(crate) externally_accessible: bool,
    pub(crate) internal_local: bool,
    pub(crate) external_local: bool,
    pub(crate) cluster_empty: bool,
    pub(crate) local_empty: bool,
    pub(crate) load_balancer_ips: bool,
    pub(crate) source_ranges: bool,
}

impl Traffic {
    /// Whether the Cluster set is needed by the policies (before knowing whether it is
    /// empty): kube-proxy's `usesClusterEndpoints`.
    pub(crate) fn uses_cluster(internal_local: bool, externally_accessible: bool) -> bool {
        !internal_local || externally_accessible
    }

    /// Whether the Local set is needed: kube-proxy's `usesLocalEndpoints`.
    pub(crate) fn uses_local(
        internal_local: bool,
        external_local: bool,
        externally_accessible: bool,
    ) -> bool {
        internal_local || (external_local && externally_accessible)
    }

    pub(crate) fn derive(i: TrafficInputs) -> Self {
        let set = |local: bool| {
            if local {
                EndpointSet::Local
            } else {
                EndpointSet::Cluster
            }
        };
        let reachable = |local: bool| i.has_endpoints && !(local && i.local_empty);
        Self {
            has_endpoints: i.has_endpoints,
            externally_accessible: i.externally_accessible,
            internal: set(i.internal_local),
            external: set(i.external_local),
            internal_reachable: reachable(i.internal_local),
            external_reachable: reachable(i.external_local),
            uses_cluster_set: !i.cluster_empty
                && Self::uses_cluster(i.internal_local, i.externally_accessible),
            uses_local_set: !i.local_empty
                && Self::uses_local(i.internal_local, i.external_local, i.externally_accessible),
            source_ranges: i.load_balancer_ips && i.source_ranges,
            firewall: i.has_endpoints && i.load_balancer_ips && i.source_ranges,
        }
    }

    /// The set external traffic reaches in kube-proxy's IPVS mode. It differs from the
    /// iptables and nftables modes: with `externalTrafficPolicy: Local` and no local
    /// endpoint, the node-port, external-IP and load-balancer virtual servers get the
    /// Cluster set's real servers instead of dropping the traffic (kubernetes#97081;
    /// `pkg/proxy/ipvs/proxier.go`, `syncEndpoint` with `onlyNodeLocalEndpoints`).
    pub fn ipvs_external(&self) -> EndpointSet {
        if self.external == EndpointSet::Local && self.external_reachable {
            EndpointSet::Local
        } else {
            EndpointSet::Cluster
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> TrafficInputs {
        TrafficInputs {
            has_endpoints: true,
            externally_accessible: true,
            internal_local: false,
            external_local: false,
            cluster_empty: false,
            local_empty: false,
            load_balancer_ips: false,
            source_ranges: false,
        }
    }

    #[test]
    fn cluster_policies_reach_the_cluster_set() {
        let t = Traffic::derive(inputs());
        assert_eq!(
            (t.internal, t.external),
            (EndpointSet::Cluster, EndpointSet::Cluster)
        );
        assert!(t.internal_reachable && t.external_reachable);
        assert!(t.uses_cluster_set && !t.uses_local_set);
    }

    #[test]
    fn external_local_without_local_endpoints_drops_external_traffic_only() {
        let t = Traffic::derive(TrafficInputs {
            external_local: true,
            local_empty: true,
            ..inputs()
        });
        assert!(t.internal_reachable);
        assert!(!t.external_reachable);
        assert!(!t.uses_local_set, "an empty set has no dispatch");
        // IPVS sends that traffic to the cluster's endpoints instead (kubernetes#97081).
        assert_eq!(t.ipvs_external(), EndpointSet::Cluster);
        let with_local = Traffic::derive(TrafficInputs {
            external_local: true,
            ..inputs()
        });
        assert_eq!(with_local.ipvs_external(), EndpointSet::Local);
    }

    #[test]
    fn internal_local_not_externally_accessible_needs_no_cluster_set() {
        let t = Traffic::derive(TrafficInputs {
            internal_local: true,
            externally_accessible: false,
            ..inputs()
        });
        assert_eq!(t.internal, EndpointSet::Local);
        assert!(!t.uses_cluster_set && t.uses_local_set);
    }

    #[test]
    fn no_endpoints_rejects_everything_and_needs_no_firewall() {
        let t = Traffic::derive(TrafficInputs {
            has_endpoints: false,
            load_balancer_ips: true,
            source_ranges: true,
            ..inputs()
        });
        assert!(!t.internal_reachable && !t.external_reachable && !t.firewall);
        let t = Traffic::derive(TrafficInputs {
            load_balancer_ips: true,
            source_ranges: true,
            ..inputs()
        });
        assert!(t.firewall);
    }
}
