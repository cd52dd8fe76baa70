//! Object metadata validation (`ValidateObjectMeta`, `ValidateLabels`, `ValidateAnnotations`).

use std::collections::BTreeMap;

use super::field::{FieldError, Path};
use super::names;
use crate::model::ObjectMeta;

/// Largest total size of annotations (keys plus values), in bytes.
const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

/// Checks a namespaced object's metadata; `name_check` is the kind's name rule.
pub(crate) fn object_meta(
    meta: &ObjectMeta,
    name_check: fn(&str) -> Vec<String>,
    errs: &mut Vec<FieldError>,
) {
    let path = Path::new("metadata");
    match (meta.name.as_deref(), meta.generate_name.as_deref()) {
        (Some(name), _) if !name.is_empty() => {
            for msg in name_check(name) {
                errs.push(FieldError::invalid(&path.child("name"), name, &msg));
            }
        }
        (_, Some(prefix)) if !prefix.is_empty() => {
            // A generated name appends five characters; the prefix must be valid with a
            // trailing dash trimmed (`ValidateObjectMeta` with `maskTrailingDash`).
            for msg in name_check(prefix.trim_end_matches('-')) {
                errs.push(FieldError::invalid(
                    &path.child("generateName"),
                    prefix,
                    &msg,
                ));
            }
        }
        _ => errs.push(FieldError::required(
            &path.child("name"),
            "name or generateName is required",
        )),
    }
    if let Some(ns) = meta.namespace.as_deref().filter(|ns| !ns.is_empty()) {
        for msg in names::dns1123_label(ns) {
            errs.push(FieldError::invalid(&path.child("namespace"), ns, &msg));
        }
    }
    if let Some(labels) = &meta.labels {
        labels_map(labels, &path.child("labels"), errs);
    }
    if let Some(annotations) = &meta.annotations {
        let ann_path = path.child("annotations");
        let mut total = 0;
        for (k, v) in annotations {
            for msg in names::qualified_name(&k.to_ascii_lowercase()) {
                errs.push(FieldError::invalid(&ann_path, k, &msg));
            }
            total += k.len() + v.len();
        }
        if total > TOTAL_ANNOTATION_SIZE_LIMIT {
            errs.push(FieldError::new_too_long(
                &ann_path,
                TOTAL_ANNOTATION_SIZE_LIMIT,
            ));
        }
    }
}

/// `ValidateLabels`: keys are qualified names, values label values; errors sit on the map's
/// path, not the key's.
pub(crate) fn labels_map(
    labels: &BTreeMap<String, String>,
    path: &Path,
    errs: &mut Vec<FieldError>,
) {
    for (k, v) in labels {
        for msg in names::qualified_name(k) {
            errs.push(FieldError::invalid(path, k, &msg));
        }
        for msg in names::label_value(v) {
            errs.push(FieldError::invalid(path, v, &msg));
        }
    }
}

impl FieldError {
    fn new_too_long(path: &Path, max: usize) -> Self {
        Self {
            path: path.clone(),
            kind: super::field::ErrorKind::TooLong,
            value: None,
            detail: format!("must have at most {max} bytes"),
        }
    }
}
