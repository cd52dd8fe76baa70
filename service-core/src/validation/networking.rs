//! `ServiceCIDR` and `IPAddress` validation (`pkg/apis/networking/validation`:
//! `ValidateServiceCIDR`, `ValidateIPAddress`), with the API server's field paths and
//! messages.

use super::field::{BadValue, FieldError, Path, ValidationError};
use super::{meta, names};
use crate::model::{IpAddressObject, ObjectMeta, ServiceCidr};

/// Go's `%#v` of the internal `ServiceCIDRSpec`, as the API server prints a bad `spec`.
fn spec_value(cidrs: &[String]) -> BadValue {
    let list: Vec<String> = cidrs.iter().map(|c| format!("{c:?}")).collect();
    BadValue::Raw(format!(
        "networking.ServiceCIDRSpec{{CIDRs:[]string{{{}}}}}",
        list.join(", ")
    ))
}

/// Cluster-scoped metadata: the name rule, and no namespace.
fn cluster_scoped(meta: &ObjectMeta, name_check: fn(&str) -> Vec<String>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut unnamespaced = meta.clone();
    let namespace = unnamespaced.namespace.take();
    meta::object_meta(&unnamespaced, name_check, &mut errs);
    if namespace.is_some_and(|ns| !ns.is_empty()) {
        errs.push(FieldError::forbidden(
            &Path::new("metadata").child("namespace"),
            "not allowed on this type",
        ));
    }
    errs
}

/// Every field error of a ServiceCIDR.
pub fn service_cidr_errors(sc: &ServiceCidr) -> Vec<FieldError> {
    let mut errs = cluster_scoped(&sc.metadata, names::dns1123_subdomain);
    let path = Path::new("spec").child("cidrs");
    let cidrs = &sc.spec.cidrs;
    if cidrs.is_empty() {
        errs.push(FieldError::required(&path, "at least one CIDR required"));
        return errs;
    }
    if cidrs.len() > 2 {
        errs.push(FieldError::invalid(
            &path,
            spec_value(cidrs),
            "may only hold up to 2 values",
        ));
        return errs;
    }
    let parsed: Vec<Option<ipnet::IpNet>> =
        cidrs.iter().map(|c| names::parse_cidr_sloppy(c)).collect();
    if cidrs.len() == 2 {
        let dual = matches!(
            (&parsed[0], &parsed[1]),
            (Some(a), Some(b)) if a.addr().is_ipv4() != b.addr().is_ipv4()
        );
        if !dual {
            errs.push(FieldError::invalid(
                &path,
                spec_value(cidrs),
                "may specify no more than one IP for each IP family, i.e 192.168.0.0/24 and 2001:db8::/64",
            ));
            return errs;
        }
    }
    for (i, (text, net)) in cidrs.iter().zip(&parsed).enumerate() {
        if net.is_none() {
            errs.push(FieldError::invalid(
                &path.index(i),
                text.as_str(),
                names::INVALID_CIDR,
            ));
        }
    }
    errs
}

/// Validates a ServiceCIDR as the API server does on create.
///
/// # Errors
/// The object is invalid (the 422 message, field by field).
pub fn validate_service_cidr(sc: &ServiceCidr) -> Result<(), ValidationError> {
    let errs = service_cidr_errors(sc);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ValidationError::new(
            "ServiceCIDR",
            sc.metadata.name(),
            errs,
        ))
    }
}

/// `ValidateIPAddressName`: the name is an IP address.
fn ip_address_name(name: &str) -> Vec<String> {
    if names::parse_ip_sloppy(name).is_some() {
        Vec::new()
    } else {
        vec![names::INVALID_IP.to_owned()]
    }
}

/// `IsValidPathSegmentName`.
fn path_segment(name: &str) -> Vec<String> {
    if name == "." || name == ".." {
        return vec![format!("may not be '{name}'")];
    }
    let mut out = Vec::new();
    for bad in ["/", "%"] {
        if name.contains(bad) {
            out.push(format!("may not contain '{bad}'"));
        }
    }
    out
}

/// Every field error of an IPAddress.
pub fn ip_address_errors(ip: &IpAddressObject) -> Vec<FieldError> {
    let mut errs = cluster_scoped(&ip.metadata, ip_address_name);
    let spec = Path::new("spec");
    let Some(parent) = &ip.spec.parent_ref else {
        errs.push(FieldError::required(&spec.child("parentRef"), ""));
        return errs;
    };
    let path = spec.child("parentRef");
    if !parent.group.is_empty() {
        for msg in names::dns1123_subdomain(&parent.group) {
            errs.push(FieldError::invalid(
                &path.child("group"),
                parent.group.as_str(),
                &msg,
            ));
        }
    }
    for (field, value, required) in [
        ("resource", &parent.resource, true),
        ("name", &parent.name, true),
        ("namespace", &parent.namespace, false),
    ] {
        if value.is_empty() {
            if required {
                errs.push(FieldError::required(&path.child(field), ""));
            }
            continue;
        }
        for msg in path_segment(value) {
            errs.push(FieldError::invalid(
                &path.child(field),
                value.as_str(),
                &msg,
            ));
        }
    }
    errs
}

/// Validates an IPAddress as the API server does on create.
///
/// # Errors
/// The object is invalid.
pub fn validate_ip_address(ip: &IpAddressObject) -> Result<(), ValidationError> {
    let errs = ip_address_errors(ip);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ValidationError::new("IPAddress", ip.metadata.name(), errs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{IpAddressSpec, ParentReference};

    fn message(sc: &ServiceCidr) -> String {
        validate_service_cidr(sc).unwrap_err().to_string()
    }

    #[test]
    fn service_cidrs_as_the_api_server_checks_them() {
        assert!(validate_service_cidr(&ServiceCidr::new("kubernetes", &["10.96.0.0/12"])).is_ok());
        assert!(
            validate_service_cidr(&ServiceCidr::new("dual", &["10.0.0.0/24", "fd00::/64"])).is_ok()
        );
        assert_eq!(
            message(&ServiceCidr::new("empty", &[])),
            "ServiceCIDR \"empty\" is invalid: spec.cidrs: Required value: at least one CIDR required"
        );
        assert_eq!(
            message(&ServiceCidr::new("two-v4", &["10.0.0.0/24", "10.1.0.0/24"])),
            "ServiceCIDR \"two-v4\" is invalid: spec.cidrs: Invalid value: networking.ServiceCIDRSpec{CIDRs:[]string{\"10.0.0.0/24\", \"10.1.0.0/24\"}}: may specify no more than one IP for each IP family, i.e 192.168.0.0/24 and 2001:db8::/64"
        );
        assert_eq!(
            message(&ServiceCidr::new(
                "three",
                &["10.0.0.0/24", "fd00::/64", "10.1.0.0/24"]
            )),
            "ServiceCIDR \"three\" is invalid: spec.cidrs: Invalid value: networking.ServiceCIDRSpec{CIDRs:[]string{\"10.0.0.0/24\", \"fd00::/64\", \"10.1.0.0/24\"}}: may only hold up to 2 values"
        );
        assert_eq!(
            message(&ServiceCidr::new("bad", &["10.0.0.0/33"])),
            "ServiceCIDR \"bad\" is invalid: spec.cidrs[0]: Invalid value: \"10.0.0.0/33\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
        );
        let mut namespaced = ServiceCidr::new("ns", &["10.0.0.0/24"]);
        namespaced.metadata.namespace = Some("default".into());
        assert!(
            message(&namespaced)
                .contains("metadata.namespace: Forbidden: not allowed on this type")
        );
        assert!(
            message(&ServiceCidr::new("Bad_Name", &["10.0.0.0/24"]))
                .contains("metadata.name: Invalid value: \"Bad_Name\"")
        );
    }

    #[test]
    fn ip_addresses_as_the_api_server_checks_them() {
        let mut ip = IpAddressObject {
            spec: IpAddressSpec {
                parent_ref: Some(ParentReference::service("default", "web")),
            },
            ..IpAddressObject::default()
        };
        ip.metadata.name = Some("10.96.0.10".into());
        assert!(validate_ip_address(&ip).is_ok());
        ip.metadata.name = Some("10.96.0.300".into());
        assert_eq!(
            validate_ip_address(&ip).unwrap_err().to_string(),
            "IPAddress \"10.96.0.300\" is invalid: metadata.name: Invalid value: \"10.96.0.300\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
        );
        ip.metadata.name = Some("fd00::10".into());
        ip.spec.parent_ref = None;
        assert_eq!(
            validate_ip_address(&ip).unwrap_err().to_string(),
            "IPAddress \"fd00::10\" is invalid: spec.parentRef: Required value"
        );
        ip.spec.parent_ref = Some(ParentReference {
            group: "Bad_Group".into(),
            resource: String::new(),
            namespace: "a/b".into(),
            name: "..".into(),
        });
        let text = validate_ip_address(&ip).unwrap_err().to_string();
        for part in [
            "spec.parentRef.group: Invalid value: \"Bad_Group\"",
            "spec.parentRef.resource: Required value",
            "spec.parentRef.name: Invalid value: \"..\": may not be '..'",
            "spec.parentRef.namespace: Invalid value: \"a/b\": may not contain '/'",
        ] {
            assert!(text.contains(part), "{part} in {text}");
        }
    }
}
