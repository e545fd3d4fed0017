//! The answer to a request that does not match its operation: an RFC 9457 problem details
//! body listing each failing location and JSON pointer. Text only; the plugin sends it.

use serde_json::{json, Value};

use super::check::Failure;

/// `type` of the problem: a URN, since there is no page to dereference.
pub const TYPE: &str = "urn:ringway:problem:request-validation";

/// The status for these failures: 415 when the body's media type is not described, else 400.
pub fn status(failures: &[Failure]) -> u16 {
    if failures.iter().any(|f| f.media_type) {
        415
    } else {
        400
    }
}

/// The problem+json body for `failures` of operation `operation` on request path `instance`.
pub fn body(operation: &str, instance: &str, failures: &[Failure]) -> String {
    let status = status(failures);
    let errors: Vec<Value> = failures
        .iter()
        .map(|f| {
            let mut e = json!({ "in": f.at, "pointer": f.pointer, "detail": f.detail });
            if let Some(n) = &f.name {
                e["name"] = Value::from(n.as_str());
            }
            e
        })
        .collect();
    json!({
        "type": TYPE,
        "title": if status == 415 { "Unsupported request media type" } else { "Request does not match the API description" },
        "status": status,
        "detail": format!("{} problem(s) with the request to operation {operation:?}", failures.len()),
        "instance": instance,
        "operation": operation,
        "errors": errors,
    })
    .to_string()
}
