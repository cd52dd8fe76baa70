//! Conversions between this crate's model and `k8s-openapi` types (feature `k8s-openapi`).
//!
//! Both sides speak the Kubernetes JSON shape, so a conversion goes through that shape:
//! nothing is lost in either direction, and fields this crate does not model survive in
//! its `extra` maps. The final binary picks the `k8s-openapi` version feature.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::model::{EndpointSlice, Endpoints, Node, Pod, Service};

/// An object that could not be converted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot convert {kind}{}: {message}", field.as_ref().map(|f| format!(" at {f}")).unwrap_or_default())]
#[non_exhaustive]
pub struct ConversionError {
    /// Kind of the object.
    pub kind: &'static str,
    /// Path of the offending field.
    pub field: Option<String>,
    /// What went wrong.
    pub message: String,
}

fn convert<A: Serialize, B: DeserializeOwned>(
    kind: &'static str,
    api_version: &str,
    from: &A,
) -> Result<B, ConversionError> {
    let mut value = serde_json::to_value(from).map_err(|e| ConversionError {
        kind,
        field: None,
        message: e.to_string(),
    })?;
    if let Value::Object(map) = &mut value {
        map.entry("apiVersion")
            .or_insert_with(|| Value::String(api_version.into()));
        map.entry("kind")
            .or_insert_with(|| Value::String(kind.into()));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ConversionError {
            kind,
            field: (path != ".").then_some(path),
            message: e.into_inner().to_string(),
        }
    })
}

macro_rules! conversions {
    ($($ours:ty, $theirs:ty, $kind:literal, $api:literal;)+) => {$(
        impl TryFrom<&$theirs> for $ours {
            type Error = ConversionError;
            fn try_from(v: &$theirs) -> Result<Self, ConversionError> {
                convert($kind, $api, v)
            }
        }
        impl TryFrom<&$ours> for $theirs {
            type Error = ConversionError;
            fn try_from(v: &$ours) -> Result<Self, ConversionError> {
                convert($kind, $api, v)
            }
        }
    )+};
}

conversions! {
    Service, core::Service, "Service", "v1";
    Endpoints, core::Endpoints, "Endpoints", "v1";
    EndpointSlice, discovery::EndpointSlice, "EndpointSlice", "discovery.k8s.io/v1";
    Pod, core::Pod, "Pod", "v1";
    Node, core::Node, "Node", "v1";
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    #[test]
    fn service_round_trips_through_k8s_openapi() {
        let theirs = core::Service {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            spec: Some(core::ServiceSpec {
                cluster_ip: Some("10.96.0.10".into()),
                ports: Some(vec![core::ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(IntOrString::String("http".into())),
                    ..Default::default()
                }]),
                external_traffic_policy: Some("Local".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ours = Service::try_from(&theirs).unwrap();
        assert_eq!(ours.metadata.name(), "web");
        assert_eq!(ours.spec.ports[0].port, 80);
        assert_eq!(
            ours.spec.external_traffic_policy,
            Some(crate::model::TrafficPolicy::Local)
        );
        let back = core::Service::try_from(&ours).unwrap();
        assert_eq!(back, theirs);
    }

    #[test]
    fn endpoint_slice_round_trips() {
        let theirs = discovery::EndpointSlice {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("web-abc".into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(vec![discovery::Endpoint {
                addresses: vec!["10.1.0.5".into()],
                conditions: Some(discovery::EndpointConditions {
                    ready: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ports: None,
        };
        let ours = EndpointSlice::try_from(&theirs).unwrap();
        assert_eq!(ours.endpoints[0].addresses[0], "10.1.0.5");
        assert_eq!(discovery::EndpointSlice::try_from(&ours).unwrap(), theirs);
    }
}
