//! A cluster's state assembled from loaded objects: defaulted, validated, ready to build a
//! [`Snapshot`].

use std::collections::HashSet;
use std::fmt;

use crate::controller::{self, ControllerConfig, SliceChanges};
use crate::defaults;
use crate::manifest::{Located, Location, Object};
use crate::model::{EndpointSlice, Endpoints, IpAddressObject, Node, Pod, Service, ServiceCidr};
use crate::snapshot::{NodeInfo, Snapshot, SnapshotError};
use crate::valid::ValidService;
use crate::validation::{self, ValidationError};

/// An object that failed validation, with where it came from.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct InvalidObject {
    /// Where the object came from.
    pub location: Location,
    /// What is wrong with it.
    pub error: ValidationError,
}

impl fmt::Display for InvalidObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.error)
    }
}

/// Defaulted and validated objects.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Cluster {
    /// Valid Services.
    pub services: Vec<ValidService>,
    /// Valid EndpointSlices.
    pub endpoint_slices: Vec<EndpointSlice>,
    /// Valid legacy Endpoints.
    pub endpoints: Vec<Endpoints>,
    /// Pods (defaulted and validated).
    pub pods: Vec<Pod>,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// ServiceCIDRs (validated): further ranges for ClusterIPs.
    pub service_cidrs: Vec<ServiceCidr>,
    /// IPAddresses (validated): ClusterIPs already held.
    pub ip_addresses: Vec<IpAddressObject>,
}

impl Cluster {
    /// Defaults and validates every object, as the API server would on create. Valid
    /// objects go into the cluster; invalid ones are returned with their locations.
    pub fn from_objects(
        objects: impl IntoIterator<Item = Located<Object>>,
    ) -> (Self, Vec<InvalidObject>) {
        let mut cluster = Self::default();
        let mut invalid = Vec::new();
        for Located { location, object } in objects {
            if let Err(error) = cluster.add(object) {
                invalid.push(InvalidObject { location, error });
            }
        }
        (cluster, invalid)
    }

    /// Adds an object built in code or loaded: defaulted and validated as the API server
    /// does on create.
    ///
    /// # Errors
    /// The object is invalid; the cluster is unchanged.
    pub fn add(&mut self, object: Object) -> Result<(), ValidationError> {
        match object {
            Object::Service(svc) => self.add_service(svc).map(|_| ()),
            Object::EndpointSlice(slice) => self.add_endpoint_slice(slice),
            Object::Endpoints(ep) => self.add_endpoints(ep),
            Object::Pod(pod) => self.add_pod(pod),
            Object::Node(node) => self.add_node(node),
            Object::ServiceCidr(sc) => {
                validation::validate_service_cidr(&sc)?;
                self.service_cidrs.push(sc);
                Ok(())
            }
            Object::IpAddress(ip) => {
                validation::validate_ip_address(&ip)?;
                self.ip_addresses.push(ip);
                Ok(())
            }
        }
    }

    /// Adds a Service (defaulted, validated); returns its validated form.
    ///
    /// # Errors
    /// The Service is invalid (the API server's 422 message, field by field).
    pub fn add_service(&mut self, mut svc: Service) -> Result<&ValidService, ValidationError> {
        defaults::service(&mut svc);
        let valid = validation::validate_service(&svc)?;
        let at = self.services.len();
        self.services.push(valid);
        Ok(&self.services[at])
    }

    /// Adds an EndpointSlice (defaulted, validated).
    ///
    /// # Errors
    /// The slice is invalid.
    pub fn add_endpoint_slice(&mut self, mut slice: EndpointSlice) -> Result<(), ValidationError> {
        defaults::endpoint_slice(&mut slice);
        validation::validate_endpoint_slice(&slice)?;
        self.endpoint_slices.push(slice);
        Ok(())
    }

    /// Adds legacy Endpoints (defaulted, validated).
    ///
    /// # Errors
    /// The object is invalid.
    pub fn add_endpoints(&mut self, mut ep: Endpoints) -> Result<(), ValidationError> {
        defaults::endpoints(&mut ep);
        validation::validate_endpoints(&ep)?;
        self.endpoints.push(ep);
        Ok(())
    }

    /// Adds a Pod (defaulted, and validated where this library reads it: its names become
    /// DNS names, its ports `targetPort`s, its addresses endpoints).
    ///
    /// # Errors
    /// The Pod is invalid; the cluster is unchanged.
    pub fn add_pod(&mut self, mut pod: Pod) -> Result<(), ValidationError> {
        defaults::pod(&mut pod);
        validation::validate_pod(&pod)?;
        self.pods.push(pod);
        Ok(())
    }

    /// Adds a Node (validated: a DNS subdomain name, no namespace).
    ///
    /// # Errors
    /// The Node is invalid; the cluster is unchanged.
    pub fn add_node(&mut self, node: Node) -> Result<(), ValidationError> {
        validation::validate_node(&node)?;
        self.nodes.push(node);
        Ok(())
    }

    /// Runs the EndpointSlice controller for every Service that has a selector, matching
    /// Pods, and no EndpointSlice yet, and adds the slices it would create. Use this when
    /// the input holds Pods rather than EndpointSlices. Returns how many slices were added.
    pub fn derive_endpoint_slices(&mut self, config: ControllerConfig) -> usize {
        let have: HashSet<(String, String)> = self
            .endpoint_slices
            .iter()
            .filter_map(|s| {
                Some((
                    s.metadata.namespace().to_owned(),
                    s.service_name()?.to_owned(),
                ))
            })
            .collect();
        let nodes = (!self.nodes.is_empty()).then_some(self.nodes.as_slice());
        let mut added = Vec::new();
        for svc in &self.services {
            let key = (svc.key.namespace.clone(), svc.key.name.clone());
            if have.contains(&key) || svc.selector.is_none() {
                continue;
            }
            let any_pod = self
                .pods
                .iter()
                .any(|p| p.metadata.namespace() == svc.key.namespace);
            if !any_pod {
                continue;
            }
            added.extend(controller::endpoint_slices(svc, &self.pods, nodes, config));
        }
        let n = added.len();
        self.endpoint_slices.extend(added);
        n
    }

    /// Runs the EndpointSlice controller for every Service with a selector against the
    /// slices the cluster holds, as kube-controller-manager does after Pods change: the
    /// cluster's slices are updated in place and the changes returned (feed them to a
    /// [`crate::tracker::ChangeTracker`] with [`SliceChanges::into_events`]).
    pub fn reconcile_endpoint_slices(&mut self, config: ControllerConfig) -> SliceChanges {
        let nodes = (!self.nodes.is_empty()).then_some(self.nodes.as_slice());
        let mut all = SliceChanges::default();
        for svc in self.services.iter().filter(|s| s.selector.is_some()) {
            let changes =
                controller::reconcile(svc, &self.pods, nodes, &self.endpoint_slices, config);
            all.create.extend(changes.create);
            all.update.extend(changes.update);
            all.delete.extend(changes.delete);
        }
        let key = |s: &EndpointSlice| {
            (
                s.metadata.namespace().to_owned(),
                s.metadata.name().to_owned(),
            )
        };
        let gone: HashSet<(String, String)> = all.delete.iter().map(key).collect();
        self.endpoint_slices.retain(|s| !gone.contains(&key(s)));
        for updated in &all.update {
            if let Some(s) = self
                .endpoint_slices
                .iter_mut()
                .find(|s| key(s) == key(updated))
            {
                s.clone_from(updated);
            }
        }
        self.endpoint_slices.extend(all.create.iter().cloned());
        all
    }

    /// The Pod `namespace/name`, to change it (e.g. its readiness) before
    /// [`Cluster::reconcile_endpoint_slices`].
    pub fn pod_mut(&mut self, namespace: &str, name: &str) -> Option<&mut Pod> {
        self.pods
            .iter_mut()
            .find(|p| p.metadata.namespace() == namespace && p.metadata.name() == name)
    }

    /// Sets the `Ready` condition of the Pod `namespace/name` (a readiness probe's verdict);
    /// false when there is no such Pod. [`Cluster::reconcile_endpoint_slices`] then carries
    /// it into the slices.
    pub fn set_pod_ready(&mut self, namespace: &str, name: &str, ready: bool) -> bool {
        self.pod_mut(namespace, name)
            .map(|p| p.set_ready(ready))
            .is_some()
    }

    /// Builds the snapshot for a node.
    ///
    /// # Errors
    /// See [`Snapshot::build`].
    pub fn snapshot(&self, node: NodeInfo) -> Result<Snapshot, SnapshotError> {
        Snapshot::build(node, &self.services, &self.endpoint_slices, &self.endpoints)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::load_str;

    const CLUSTER: &str = r"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: Bad, namespace: shop}
spec:
  ports: [{port: 0}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec:
  nodeName: node-a
  containers:
  - name: app
    ports: [{name: http, containerPort: 8080}]
status:
  phase: Running
  podIP: 10.1.0.5
  podIPs: [{ip: 10.1.0.5}]
  conditions: [{type: Ready, status: 'True'}]
";

    #[test]
    fn load_validate_derive_and_snapshot() {
        let loaded = load_str("c.yaml", CLUSTER).unwrap();
        let (mut cluster, invalid) = Cluster::from_objects(loaded.objects);
        assert_eq!(invalid.len(), 1);
        let msg = invalid[0].to_string();
        assert!(
            msg.starts_with("c.yaml: document 2 (line 9): Service \"Bad\" is invalid: ["),
            "{msg}"
        );
        assert!(
            msg.contains("spec.ports[0].port: Invalid value: 0"),
            "{msg}"
        );
        assert_eq!(cluster.services.len(), 1);
        assert_eq!(
            cluster.derive_endpoint_slices(ControllerConfig::default()),
            1
        );
        // Deriving again adds nothing: the Service now has a slice.
        assert_eq!(
            cluster.derive_endpoint_slices(ControllerConfig::default()),
            0
        );
        let snap = cluster
            .snapshot(NodeInfo::new(
                "node-a",
                vec!["192.168.0.2".parse().unwrap()],
            ))
            .unwrap();
        let port = snap.service_ports().next().unwrap();
        let v4 = port.ipv4.as_ref().unwrap();
        assert_eq!(v4.endpoints[0].addr().to_string(), "10.1.0.5:8080");
        assert!(v4.endpoints[0].is_local);
    }
}
