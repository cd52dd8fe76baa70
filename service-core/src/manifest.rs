//! Loading Kubernetes manifests: multi-document YAML, JSON, and `kind: List`, as `kubectl get
//! -o yaml|json` prints them or as people write them.
//!
//! The loader takes text, not files: the caller reads the file and passes its name for
//! messages. Unknown kinds are skipped with a [`Warning`]; malformed input is a
//! [`ManifestError`] naming the source, the document, the object and the field.

// Manifest errors are rare and carry everything a user needs to find the problem; boxing
// them would only make them clumsier to match on.
#![allow(clippy::result_large_err)]

use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::model::{EndpointSlice, Endpoints, IpAddressObject, Node, Pod, Service, ServiceCidr};

/// An object this library understands.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Object {
    /// A v1 Service.
    Service(Service),
    /// A v1 Endpoints.
    Endpoints(Endpoints),
    /// A discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice(EndpointSlice),
    /// A v1 Pod.
    Pod(Pod),
    /// A v1 Node.
    Node(Node),
    /// A networking.k8s.io/v1 ServiceCIDR.
    ServiceCidr(ServiceCidr),
    /// A networking.k8s.io/v1 IPAddress.
    IpAddress(IpAddressObject),
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Service(_) => "Service",
            Self::Endpoints(_) => "Endpoints",
            Self::EndpointSlice(_) => "EndpointSlice",
            Self::Pod(_) => "Pod",
            Self::Node(_) => "Node",
            Self::ServiceCidr(_) => "ServiceCIDR",
            Self::IpAddress(_) => "IPAddress",
        }
    }
}

/// Where an object came from: the source name, the 1-based document number, and for items
/// of a `List` the 0-based item index.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Location {
    /// The source's name, usually a file path.
    pub source: String,
    /// 1-based document number within the source.
    pub document: usize,
    /// 1-based line where the document starts.
    pub line: usize,
    /// Index within a `List` document.
    pub item: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: document {} (line {})",
            self.source, self.document, self.line
        )?;
        if let Some(item) = self.item {
            write!(f, ", items[{item}]")?;
        }
        Ok(())
    }
}

/// An object with its location.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Located<T> {
    /// Where it came from.
    pub location: Location,
    /// The object.
    pub object: T,
}

impl Location {
    /// The first document of `source` (a file name, or what an object built in code came
    /// from: `"code"`).
    pub fn new(source: &str) -> Self {
        Self {
            source: source.to_owned(),
            document: 1,
            line: 1,
            item: None,
        }
    }
}

impl<T> Located<T> {
    /// An object and where it came from.
    pub fn new(location: Location, object: T) -> Self {
        Self { location, object }
    }
}

/// Something the loader skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Warning {
    /// Where.
    pub location: Location,
    /// What and why.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// What a source held.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Loaded {
    /// Objects, in source order.
    pub objects: Vec<Located<Object>>,
    /// Skipped documents and objects.
    pub warnings: Vec<Warning>,
}

/// Malformed input. Nothing from the source is returned when this happens.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct ManifestError {
    /// Where.
    pub location: Location,
    /// `Kind namespace/name` of the offending object, when known.
    pub object: Option<String>,
    /// Path of the offending field (`spec.ports[0].port`), when known.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.location)?;
        if let Some(obj) = &self.object {
            write!(f, " ({obj})")?;
        }
        f.write_str(": ")?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Loads every object from one source. `source` names it in messages (a file path, `-`).
///
/// Text whose first non-blank character is `{` or `[` is read as JSON, anything else as
/// (multi-document) YAML. Empty documents are ignored.
///
/// # Errors
/// A [`ManifestError`] for text that does not parse, a document that is not an object or
/// lacks `kind`, or an object whose fields have the wrong shape.
pub fn load_str(source: &str, text: &str) -> Result<Loaded, ManifestError> {
    let mut loaded = Loaded::default();
    if text.trim_start().starts_with(['{', '[']) {
        let at = Location {
            source: source.to_owned(),
            document: 1,
            line: 1,
            item: None,
        };
        let v: Value = serde_json::from_str(text).map_err(|e| ManifestError {
            location: at.clone(),
            object: None,
            field: None,
            message: format!("invalid JSON: {e}"),
        })?;
        match v {
            Value::Array(items) => {
                for (i, item) in items.into_iter().enumerate() {
                    let mut loc = at.clone();
                    loc.item = Some(i);
                    load_document(loc, item, &mut loaded)?;
                }
            }
            other => load_document(at, other, &mut loaded)?,
        }
        return Ok(loaded);
    }
    for (i, (line, doc)) in split_yaml_documents(text).into_iter().enumerate() {
        let location = Location {
            source: source.to_owned(),
            document: i + 1,
            line,
            item: None,
        };
        if doc.trim().is_empty() {
            continue;
        }
        let value: Value = serde_saphyr::from_str(doc).map_err(|e| ManifestError {
            location: location.clone(),
            object: None,
            field: None,
            message: format!("invalid YAML (lines counted from the document's start): {e}"),
        })?;
        load_document(location, value, &mut loaded)?;
    }
    Ok(loaded)
}

/// Splits a YAML stream into documents at `---` and `...` marker lines, as kubectl does, and
/// returns each document with its first line number (1-based). A marker may carry content
/// after a space (`--- {a: 1}`); that content belongs to the new document.
fn split_yaml_documents(text: &str) -> Vec<(usize, &str)> {
    let is_marker = |line: &str, marker: &str| {
        line.strip_prefix(marker)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r']))
    };
    let mut docs = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    let mut seen_content = false;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        if is_marker(bare, "---") {
            if seen_content || offset > start {
                docs.push((start_line, &text[start..offset]));
            }
            // The new document starts right after the marker.
            start = offset + 3;
            start_line = n + 1;
            seen_content = false;
        } else if is_marker(bare, "...") {
            docs.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = n + 2;
            seen_content = false;
        } else if !bare.trim().is_empty() && !bare.trim_start().starts_with('#') {
            seen_content = true;
        }
        offset += line.len();
    }
    if seen_content || docs.is_empty() {
        docs.push((start_line, &text[start..]));
    }
    docs
}

fn load_document(location: Location, doc: Value, out: &mut Loaded) -> Result<(), ManifestError> {
    if doc.is_null() {
        return Ok(());
    }
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let is_list = kind == "List" || (kind.ends_with("List") && doc.get("items").is_some());
    if is_list && location.item.is_none() {
        let Value::Object(mut map) = doc else {
            not_an_object(&location)?;
            return Ok(());
        };
        match map.remove("items") {
            Some(Value::Array(items)) => {
                for (i, item) in items.into_iter().enumerate() {
                    let mut loc = location.clone();
                    loc.item = Some(i);
                    load_document(loc, item, out)?;
                }
                Ok(())
            }
            Some(Value::Null) | None => Ok(()),
            Some(_) => Err(ManifestError {
                location,
                object: Some(kind),
                field: Some("items".into()),
                message: "must be a list of objects".into(),
            }),
        }
    } else {
        load_object(location, doc, out)
    }
}

fn not_an_object(location: &Location) -> Result<(), ManifestError> {
    Err(ManifestError {
        location: location.clone(),
        object: None,
        field: None,
        message: "a document must be an object with `apiVersion` and `kind`".into(),
    })
}

fn describe(doc: &Value, kind: &str) -> String {
    let meta = doc.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>");
    match meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
    {
        Some(ns) if !ns.is_empty() => format!("{kind} {ns}/{name}"),
        _ => format!("{kind} {name}"),
    }
}

fn load_object(location: Location, doc: Value, out: &mut Loaded) -> Result<(), ManifestError> {
    if !doc.is_object() {
        return not_an_object(&location);
    }
    let Some(kind) = doc.get("kind").and_then(Value::as_str).map(str::to_owned) else {
        return Err(ManifestError {
            location,
            object: None,
            field: Some("kind".into()),
            message: "required: every object must have a `kind`".into(),
        });
    };
    let api_version = doc
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let what = describe(&doc, &kind);
    let object = match (kind.as_str(), api_version.as_str()) {
        ("Service", "v1" | "") => Object::Service(typed(&location, &what, doc)?),
        ("Endpoints", "v1" | "") => Object::Endpoints(typed(&location, &what, doc)?),
        ("EndpointSlice", "discovery.k8s.io/v1" | "") => {
            Object::EndpointSlice(typed(&location, &what, doc)?)
        }
        ("Pod", "v1" | "") => Object::Pod(typed(&location, &what, doc)?),
        ("Node", "v1" | "") => Object::Node(typed(&location, &what, doc)?),
        ("ServiceCIDR", "networking.k8s.io/v1" | "networking.k8s.io/v1beta1" | "") => {
            Object::ServiceCidr(typed(&location, &what, doc)?)
        }
        ("IPAddress", "networking.k8s.io/v1" | "networking.k8s.io/v1beta1" | "") => {
            Object::IpAddress(typed(&location, &what, doc)?)
        }
        _ => {
            out.warnings.push(Warning {
                location,
                message: format!("skipping {what} ({api_version}): not a kind this tool uses"),
            });
            return Ok(());
        }
    };
    out.objects.push(Located { location, object });
    Ok(())
}

fn typed<T: DeserializeOwned>(
    location: &Location,
    what: &str,
    doc: Value,
) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        ManifestError {
            location: location.clone(),
            object: Some(what.to_owned()),
            field: (path != ".").then_some(path),
            message: e.into_inner().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_with_unknown_kinds() {
        let text = r"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{port: 80, targetPort: http}]
---
# a comment-only document is empty
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
- addresses: [10.1.0.5]
  conditions: {ready: true}
ports: [{name: '', port: 8080, protocol: TCP}]
";
        let loaded = load_str("demo.yaml", text).unwrap();
        assert_eq!(loaded.objects.len(), 2);
        assert_eq!(loaded.warnings.len(), 1);
        assert!(loaded.warnings[0].message.contains("Deployment web"));
        assert_eq!(loaded.warnings[0].location.document, 3);
        let Object::Service(svc) = &loaded.objects[0].object else {
            panic!("expected a Service");
        };
        assert_eq!(svc.metadata.name(), "web");
        assert_eq!(
            svc.spec.ports[0].target_port,
            Some(crate::model::IntOrString::String("http".into()))
        );
        let Object::EndpointSlice(slice) = &loaded.objects[1].object else {
            panic!("expected an EndpointSlice");
        };
        assert_eq!(slice.service_name(), Some("web"));
        assert_eq!(loaded.objects[1].location.document, 4);
        // The document starts on its `---` line.
        assert_eq!(loaded.objects[1].location.line, 13);
    }

    #[test]
    fn json_list() {
        let text = r#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":1}]}},
            {"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}}]}"#;
        let loaded = load_str("x.json", text).unwrap();
        assert_eq!(loaded.objects.len(), 1);
        assert_eq!(loaded.objects[0].location.item, Some(0));
        assert_eq!(loaded.warnings[0].location.item, Some(1));
    }

    #[test]
    fn yaml_service_list_from_kubectl() {
        let text = "apiVersion: v1\nkind: ServiceList\nitems:\n- metadata: {name: a}\n  spec: {ports: [{port: 1}]}\n";
        // Items of a typed list may omit kind; such items are not loadable.
        let err = load_str("svcs.yaml", text).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("kind"));
        assert!(
            err.to_string()
                .starts_with("svcs.yaml: document 1 (line 1), items[0]"),
            "{err}"
        );
    }

    #[test]
    fn malformed_fields_name_the_object_and_field() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  ports:\n  - port: 80\n  - port: eighty\n";
        let err = load_str("bad.yaml", text).unwrap_err();
        assert_eq!(err.object.as_deref(), Some("Service shop/web"));
        assert_eq!(err.field.as_deref(), Some("spec.ports[1].port"));
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "bad.yaml: document 1 (line 1) (Service shop/web): spec.ports[1].port: invalid type"
            ),
            "{msg}"
        );
    }

    /// Kubernetes reads YAML with go-yaml v2 (`sigs.k8s.io/yaml`), a YAML 1.1 parser: an
    /// unquoted `n`, `no`, `off` or `y` is a boolean, so `name: n` is rejected by kubectl
    /// too ("cannot unmarshal bool into Go struct field ObjectMeta.metadata.name").
    #[test]
    fn yaml_1_1_booleans_are_not_names() {
        let text =
            "apiVersion: v1\nkind: Service\nmetadata: {name: n}\nspec: {ports: [{port: 1}]}\n";
        let err = load_str("x", text).unwrap_err().to_string();
        assert!(
            err.contains("metadata.name") && err.contains("boolean"),
            "{err}"
        );
        let quoted = text.replace("name: n", "name: 'n'");
        assert_eq!(load_str("x", &quoted).unwrap().objects.len(), 1);
    }

    #[test]
    fn syntax_errors_and_non_objects() {
        assert!(load_str("x", "kind: [unclosed").is_err());
        assert!(load_str("x", "{not json").is_err());
        let err = load_str("x", "- 1\n- 2\n").unwrap_err();
        assert!(err.message.contains("must be an object"), "{err}");
        assert!(load_str("x", "metadata: {name: a}\n").is_err());
        assert!(load_str("x", "").unwrap().objects.is_empty());
    }

    #[test]
    fn yaml_document_splitting() {
        let docs = split_yaml_documents("a: 1\n---\nb: 2\n--- {c: 3}\n...\n---\n");
        assert_eq!(docs, vec![(1, "a: 1\n"), (2, "\nb: 2\n"), (4, " {c: 3}\n")]);
        // A leading marker does not make an empty first document.
        let docs = split_yaml_documents("---\na: 1\n");
        assert_eq!(docs, vec![(1, "\na: 1\n")]);
        // Markers need a separator: `---x` is content.
        assert_eq!(split_yaml_documents("a: ---x\n").len(), 1);
    }
}
