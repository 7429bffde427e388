//! Errors as the real server sends them: a `Status` object with code, reason, message and,
//! for an object, `details` naming it (and for 422, the `causes`).

use std::convert::Infallible;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use super::kinds::Kind;

pub type Body = BoxBody<Bytes, Infallible>;

#[derive(Debug)]
/// One field error of a 422: `field: Reason: detail`, as field.Error prints it.
pub struct Cause {
    pub field: String,
    /// `FieldValueRequired`, `FieldValueInvalid`, ...
    pub reason: &'static str,
    /// The printed form, `metadata.name: Required value`.
    pub message: String,
}

impl Cause {
    pub fn required(field: &str) -> Cause {
        Cause {
            field: field.into(),
            reason: "FieldValueRequired",
            message: format!("{field}: Required value"),
        }
    }
    pub fn invalid(field: &str, value: &Value, detail: &str) -> Cause {
        let shown = match value {
            Value::String(s) => format!("\"{s}\""),
            Value::Number(n) => n.to_string(),
            other => other.to_string(),
        };
        Cause {
            field: field.into(),
            reason: "FieldValueInvalid",
            message: format!("{field}: Invalid value: {shown}: {detail}"),
        }
    }
}

/// A Status error.
#[derive(Debug)]
pub struct ApiFail {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiFail {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiFail {
        ApiFail {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }
    pub fn for_object(
        code: u16,
        reason: &'static str,
        kind: Kind,
        name: &str,
        message: String,
    ) -> ApiFail {
        ApiFail {
            code,
            reason,
            message,
            details: Some(json!({"name": name, "group": kind.group(), "kind": kind.plural()})),
        }
    }
    /// 405 for a verb the resource does not serve.
    pub fn method_not_allowed(method: &str) -> ApiFail {
        ApiFail::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource: {method}"),
        )
    }
    pub fn not_found(kind: Kind, name: &str) -> ApiFail {
        ApiFail::for_object(
            404,
            "NotFound",
            kind,
            name,
            format!("{} \"{name}\" not found", kind.qualified()),
        )
    }
    pub fn conflict(kind: Kind, name: &str) -> ApiFail {
        ApiFail::cannot_fulfil(
            kind,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }
    /// 409: `Operation cannot be fulfilled on <resource> "<name>": <why>`.
    pub fn cannot_fulfil(kind: Kind, name: &str, why: &str) -> ApiFail {
        ApiFail::for_object(
            409,
            "Conflict",
            kind,
            name,
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                kind.qualified()
            ),
        )
    }
    /// 422 Invalid, as apierrors.NewInvalid words it: `Kind "name" is invalid: <causes>`.
    pub fn invalid(kind: Kind, name: &str, causes: Vec<Cause>) -> ApiFail {
        let printed: Vec<&str> = causes.iter().map(|c| c.message.as_str()).collect();
        // The group-qualified kind, as schema.GroupKind prints it: `Lease.coordination.k8s.io`.
        let qualified = if kind.group().is_empty() {
            kind.kind().to_string()
        } else {
            format!("{}.{}", kind.kind(), kind.group())
        };
        let message = if printed.len() == 1 {
            format!("{qualified} \"{name}\" is invalid: {}", printed[0])
        } else {
            format!(
                "{qualified} \"{name}\" is invalid: [{}]",
                printed.join(", ")
            )
        };
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| {
                let detail = c
                    .message
                    .strip_prefix(&format!("{}: ", c.field))
                    .unwrap_or(&c.message);
                json!({"reason": c.reason, "message": detail, "field": c.field})
            })
            .collect();
        ApiFail {
            code: 422,
            reason: "Invalid",
            message,
            details: Some(
                json!({"name": name, "group": kind.group(), "kind": kind.kind(), "causes": causes}),
            ),
        }
    }

    /// 422 about the request's options, not its object (`PatchOptions.meta.k8s.io "" is invalid`).
    pub fn invalid_options(field: &str, reason: &'static str, detail: &str) -> ApiFail {
        ApiFail {
            code: 422,
            reason: "Invalid",
            message: format!("PatchOptions.meta.k8s.io \"\" is invalid: {field}: {detail}"),
            details: Some(
                json!({"group": "meta.k8s.io", "kind": "PatchOptions", "causes": [
                {"reason": reason, "message": detail, "field": field}]}),
            ),
        }
    }

    pub fn status(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        // StatusReasonUnknown is the empty string, which the server leaves out.
        if self.reason.is_empty() {
            v.as_object_mut().expect("object").remove("reason");
        }
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

pub fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

pub fn full(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).expect("JSON"))).boxed())
        .expect("response parts")
}

pub fn fail(f: ApiFail) -> Response<Body> {
    let retry = f
        .details
        .as_ref()
        .and_then(|d| d["retryAfterSeconds"].as_u64());
    let mut r = full(
        StatusCode::from_u16(f.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &f.status(),
    );
    if let Some(secs) = retry {
        r.headers_mut().insert(
            "retry-after",
            secs.to_string().parse().expect("header value"),
        );
    }
    r
}
