//! A cluster's state assembled from loaded objects: defaulted, validated, ready to build a
//! [`Snapshot`].

use std::collections::HashSet;
use std::fmt;

use crate::controller::{self, ControllerConfig};
use crate::defaults;
use crate::manifest::{Located, Location, Object};
use crate::model::{EndpointSlice, Endpoints, Node, Pod};
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
    /// Pods (defaulted; not validated, they only feed the endpoints controller).
    pub pods: Vec<Pod>,
    /// Nodes.
    pub nodes: Vec<Node>,
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
            let result = match object {
                Object::Service(mut svc) => {
                    defaults::service(&mut svc);
                    validation::validate_service(&svc).map(|v| cluster.services.push(v))
                }
                Object::EndpointSlice(mut slice) => {
                    defaults::endpoint_slice(&mut slice);
                    validation::validate_endpoint_slice(&slice)
                        .map(|()| cluster.endpoint_slices.push(slice))
                }
                Object::Endpoints(mut ep) => {
                    defaults::endpoints(&mut ep);
                    validation::validate_endpoints(&ep).map(|()| cluster.endpoints.push(ep))
                }
                Object::Pod(mut pod) => {
                    defaults::pod(&mut pod);
                    cluster.pods.push(pod);
                    Ok(())
                }
                Object::Node(node) => {
                    cluster.nodes.push(node);
                    Ok(())
                }
            };
            if let Err(error) = result {
                invalid.push(InvalidObject { location, error });
            }
        }
        (cluster, invalid)
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
