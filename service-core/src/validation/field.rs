//! Field errors in the shape the API server reports them (`k8s.io/apimachinery/pkg/util/validation/field`).

use std::fmt;

/// A path to a field, such as `spec.ports[1].name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Path(String);

impl Path {
    /// A path starting at a top-level field.
    pub fn new(root: &str) -> Self {
        Self(root.to_owned())
    }

    /// The path of a child field: `spec` → `spec.ports`.
    #[must_use]
    pub fn child(&self, name: &str) -> Self {
        if self.0.is_empty() {
            return Self(name.to_owned());
        }
        Self(format!("{}.{name}", self.0))
    }

    /// The path of a list element: `spec.ports` → `spec.ports[1]`.
    #[must_use]
    pub fn index(&self, i: usize) -> Self {
        Self(format!("{}[{i}]", self.0))
    }

    /// The path of a map entry: `metadata.annotations` → `metadata.annotations[key]`.
    #[must_use]
    pub fn key(&self, key: &str) -> Self {
        Self(format!("{}[{key}]", self.0))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What is wrong with a field (`field.ErrorType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A required field is missing ("Required value").
    Required,
    /// The value is malformed or out of range ("Invalid value").
    Invalid,
    /// The value is not one of the allowed values ("Unsupported value").
    NotSupported,
    /// The value repeats one that must be unique ("Duplicate value").
    Duplicate,
    /// The field may not be set in this context ("Forbidden").
    Forbidden,
    /// The list has too many elements ("Too many").
    TooMany,
    /// The value is too long ("Too long").
    TooLong,
    /// The validator itself failed ("Internal error").
    Internal,
}

impl ErrorKind {
    /// The phrase the API server uses for this kind.
    pub fn phrase(self) -> &'static str {
        match self {
            Self::Required => "Required value",
            Self::Invalid => "Invalid value",
            Self::NotSupported => "Unsupported value",
            Self::Duplicate => "Duplicate value",
            Self::Forbidden => "Forbidden",
            Self::TooMany => "Too many",
            Self::TooLong => "Too long",
            Self::Internal => "Internal error",
        }
    }
}

/// The offending value, printed as the API server prints it (Go's `%#v`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BadValue {
    /// An integer, printed bare: `8080`.
    Int(i64),
    /// A string, printed quoted: `"ICMP"`.
    Str(String),
    /// A list of strings, printed as `[]string{"a", "b"}`.
    StrList(Vec<String>),
    /// A value printed verbatim.
    Raw(String),
}

impl fmt::Display for BadValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(i) => write!(f, "{i}"),
            Self::Str(s) => write!(f, "{s:?}"),
            Self::StrList(list) => {
                f.write_str("[]string{")?;
                for (i, s) in list.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{s:?}")?;
                }
                f.write_str("}")
            }
            Self::Raw(s) => f.write_str(s),
        }
    }
}

impl From<&str> for BadValue {
    fn from(s: &str) -> Self {
        Self::Str(s.to_owned())
    }
}

impl From<&String> for BadValue {
    fn from(s: &String) -> Self {
        Self::Str(s.clone())
    }
}

impl From<i32> for BadValue {
    fn from(i: i32) -> Self {
        Self::Int(i64::from(i))
    }
}

impl From<usize> for BadValue {
    fn from(i: usize) -> Self {
        Self::Int(i64::try_from(i).unwrap_or(i64::MAX))
    }
}

impl From<&[String]> for BadValue {
    fn from(list: &[String]) -> Self {
        Self::StrList(list.to_vec())
    }
}

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct FieldError {
    /// Where: `spec.ports[1].name`.
    pub path: Path,
    /// What kind of problem.
    pub kind: ErrorKind,
    /// The offending value, when the message shows it.
    pub value: Option<BadValue>,
    /// Why, in words.
    pub detail: String,
}

impl FieldError {
    /// A missing required field.
    pub fn required(path: &Path, detail: &str) -> Self {
        Self::new(path, ErrorKind::Required, None, detail)
    }

    /// A malformed value.
    pub fn invalid(path: &Path, value: impl Into<BadValue>, detail: &str) -> Self {
        Self::new(path, ErrorKind::Invalid, Some(value.into()), detail)
    }

    /// A value outside the supported set; `supported` is listed in the message, sorted.
    pub fn not_supported(path: &Path, value: impl Into<BadValue>, supported: &[&str]) -> Self {
        let mut sorted = supported.to_vec();
        sorted.sort_unstable();
        let detail = if sorted.is_empty() {
            String::new()
        } else {
            let quoted: Vec<String> = sorted.iter().map(|s| format!("{s:?}")).collect();
            format!("supported values: {}", quoted.join(", "))
        };
        Self::new(path, ErrorKind::NotSupported, Some(value.into()), &detail)
    }

    /// A value that must be unique but is not.
    pub fn duplicate(path: &Path, value: impl Into<BadValue>) -> Self {
        Self::new(path, ErrorKind::Duplicate, Some(value.into()), "")
    }

    /// A field that may not be set here.
    pub fn forbidden(path: &Path, detail: &str) -> Self {
        Self::new(path, ErrorKind::Forbidden, None, detail)
    }

    /// A list with more than `max` elements.
    pub fn too_many(path: &Path, actual: usize, max: usize) -> Self {
        Self::new(
            path,
            ErrorKind::TooMany,
            Some(actual.into()),
            &format!("must have at most {max} items"),
        )
    }

    /// A validator failure.
    pub fn internal(path: &Path, detail: &str) -> Self {
        Self::new(path, ErrorKind::Internal, None, detail)
    }

    fn new(path: &Path, kind: ErrorKind, value: Option<BadValue>, detail: &str) -> Self {
        Self {
            path: path.clone(),
            kind,
            value,
            detail: detail.to_owned(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.kind.phrase())?;
        let shows_value = !matches!(
            self.kind,
            ErrorKind::Required | ErrorKind::Forbidden | ErrorKind::TooLong | ErrorKind::Internal
        );
        if let (true, Some(value)) = (shows_value, &self.value) {
            write!(f, ": {value}")?;
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

/// Every validation problem of one object, displayed as the API server's 422 message:
/// `The Service "web" is invalid: spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct ValidationError {
    /// Kind of the object (`Service`, `EndpointSlice.discovery.k8s.io`, ...).
    pub kind: String,
    /// Name of the object.
    pub name: String,
    /// The problems, in the order the API server finds them.
    pub errors: Vec<FieldError>,
}

impl ValidationError {
    /// Collects field errors of one object.
    pub fn new(kind: &str, name: &str, errors: Vec<FieldError>) -> Self {
        Self {
            kind: kind.to_owned(),
            name: name.to_owned(),
            errors,
        }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?} is invalid: ", self.kind, self.name)?;
        match self.errors.as_slice() {
            [one] => write!(f, "{one}"),
            many => {
                f.write_str("[")?;
                for (i, e) in many.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{e}")?;
                }
                f.write_str("]")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_match_the_api_server() {
        let p = Path::new("spec").child("ports").index(0);
        assert_eq!(
            FieldError::invalid(
                &p.child("port"),
                0,
                "must be between 1 and 65535, inclusive"
            )
            .to_string(),
            "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"
        );
        assert_eq!(
            FieldError::not_supported(&p.child("protocol"), "ICMP", &["TCP", "UDP", "SCTP"])
                .to_string(),
            r#"spec.ports[0].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP""#
        );
        assert_eq!(
            FieldError::required(&p.child("name"), "").to_string(),
            "spec.ports[0].name: Required value"
        );
        assert_eq!(
            FieldError::duplicate(&p.child("name"), "http").to_string(),
            r#"spec.ports[0].name: Duplicate value: "http""#
        );
        assert_eq!(
            FieldError::forbidden(
                &p.child("nodePort"),
                "may not be used when `type` is 'ClusterIP'"
            )
            .to_string(),
            "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"
        );
        let list = ["1.2.3.4".to_string(), "5.6.7.8".to_string()];
        assert_eq!(
            FieldError::invalid(&Path::new("spec").child("clusterIPs"), &list[..], "x").to_string(),
            r#"spec.clusterIPs: Invalid value: []string{"1.2.3.4", "5.6.7.8"}: x"#
        );
        assert_eq!(
            Path::new("metadata")
                .child("annotations")
                .key("a/b")
                .as_str(),
            "metadata.annotations[a/b]"
        );
    }

    #[test]
    fn aggregate_message() {
        let p = Path::new("spec").child("type");
        let one = ValidationError::new("Service", "web", vec![FieldError::required(&p, "")]);
        assert_eq!(
            one.to_string(),
            r#"Service "web" is invalid: spec.type: Required value"#
        );
        let two = ValidationError::new(
            "Service",
            "web",
            vec![FieldError::required(&p, ""), FieldError::required(&p, "")],
        );
        assert_eq!(
            two.to_string(),
            r#"Service "web" is invalid: [spec.type: Required value, spec.type: Required value]"#
        );
    }
}
