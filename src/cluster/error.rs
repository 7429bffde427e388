//! The one mapping of the API server's answers: every call in this room turns a `kube::Error`
//! into a [`StatusError`], and the domain rooms get their own error types from that.

use std::time::Duration;

use crate::fence::ApiError;

/// What the API server (or the way to it) answered, as callers must tell it apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    /// 409 on a write whose resourceVersion is stale: re-read and re-decide.
    #[error("409 Conflict: {0}")]
    Conflict(String),
    /// 409 on a create of an object that exists.
    #[error("409 AlreadyExists: {0}")]
    AlreadyExists(String),
    /// 404 for the object.
    #[error("404 NotFound: {0}")]
    NotFound(String),
    /// 404 because the namespace itself does not exist (`details.kind` is `namespaces`):
    /// waiting will not fix it.
    #[error("namespace {0} does not exist")]
    NamespaceMissing(String),
    /// 403: the agent's identity may not do this; the message names verb and resource.
    #[error("403 Forbidden: {0}")]
    Forbidden(String),
    /// 410: the resourceVersion asked for is older than the server keeps (a watch relists).
    #[error("410 Gone: {0}")]
    Gone(String),
    /// 429: the server sheds load; `retry_after` is its `details.retryAfterSeconds`.
    #[error("429 TooManyRequests: {message}{}", retry_after.map(|d| format!(" (retry after {} s)", d.as_secs())).unwrap_or_default())]
    TooManyRequests {
        message: String,
        retry_after: Option<Duration>,
    },
    /// 5xx: the server (or etcd behind it) failed.
    #[error("{code} {reason}: {message}")]
    Server {
        code: u16,
        reason: String,
        message: String,
    },
    /// Any other refusal (400, 401, 422, ...): the request itself is wrong.
    #[error("{code} {reason}: {message}")]
    Refused {
        code: u16,
        reason: String,
        message: String,
    },
    /// No answer: unreachable, timed out, TLS, a body that does not decode.
    #[error("{0}")]
    Transport(String),
}

impl StatusError {
    pub fn from_kube(e: &kube::Error) -> StatusError {
        match e {
            kube::Error::Api(s) => StatusError::from_status(s),
            other => StatusError::Transport(other.to_string()),
        }
    }

    pub fn from_status(s: &kube::core::Status) -> StatusError {
        let details = s.details.as_ref();
        let message = s.message.clone();
        match s.code {
            409 if s.is_already_exists() => StatusError::AlreadyExists(message),
            409 => StatusError::Conflict(message),
            404 if details.is_some_and(|d| d.kind == "namespaces") => {
                StatusError::NamespaceMissing(details.map(|d| d.name.clone()).unwrap_or_default())
            }
            404 => StatusError::NotFound(message),
            403 => StatusError::Forbidden(message),
            410 => StatusError::Gone(message),
            429 => StatusError::TooManyRequests {
                message,
                retry_after: details
                    .map(|d| d.retry_after_seconds)
                    .filter(|s| *s > 0)
                    .map(|s| Duration::from_secs(u64::from(s))),
            },
            code @ 500..=599 => StatusError::Server {
                code,
                reason: s.reason.clone(),
                message,
            },
            code => StatusError::Refused {
                code,
                reason: s.reason.clone(),
                message,
            },
        }
    }

    /// How long the server asked us to wait before the next request, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            StatusError::TooManyRequests { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// What the lease protocol tells apart. It keeps its own retry schedule (within D − M) even
/// when the server asks for more time: a renew that cannot wait is a lost renew.
impl From<StatusError> for ApiError {
    fn from(e: StatusError) -> ApiError {
        match e {
            StatusError::Conflict(_) => ApiError::Conflict,
            StatusError::AlreadyExists(_) => ApiError::AlreadyExists,
            StatusError::NotFound(_) => ApiError::NotFound,
            StatusError::NamespaceMissing(ns) => ApiError::NamespaceMissing(ns),
            StatusError::Forbidden(m) => ApiError::Forbidden(m),
            other => ApiError::Unavailable(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(body: &str) -> kube::core::Status {
        serde_json::from_str(body).unwrap()
    }

    fn api(body: &str) -> ApiError {
        StatusError::from_status(&status(body)).into()
    }

    /// Bodies as a kube-apiserver sends them (v1.24+): the namespace case differs from a
    /// missing object only in `details.kind`.
    #[test]
    fn server_statuses_map_to_what_the_operator_must_do() {
        let missing_ns = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"namespaces \"kube-node-lease\" not found","reason":"NotFound","details":{"name":"kube-node-lease","kind":"namespaces"},"code":404}"#;
        assert_eq!(
            api(missing_ns),
            ApiError::NamespaceMissing("kube-node-lease".into())
        );
        let missing_lease = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"leases.coordination.k8s.io \"n1\" not found","reason":"NotFound","details":{"name":"n1","group":"coordination.k8s.io","kind":"leases"},"code":404}"#;
        assert_eq!(api(missing_lease), ApiError::NotFound);
        let forbidden = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"leases.coordination.k8s.io is forbidden: User \"system:serviceaccount:default:x\" cannot list resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"kube-node-lease\"","reason":"Forbidden","details":{"group":"coordination.k8s.io","kind":"leases"},"code":403}"#;
        assert!(matches!(api(forbidden),
            ApiError::Forbidden(m) if m.contains("cannot list resource \"leases\"")));
        let exists = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"leases.coordination.k8s.io \"n1\" already exists","reason":"AlreadyExists","details":{"name":"n1","group":"coordination.k8s.io","kind":"leases"},"code":409}"#;
        assert_eq!(api(exists), ApiError::AlreadyExists);
        let conflict = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Operation cannot be fulfilled on leases.coordination.k8s.io \"n1\": the object has been modified; please apply your changes to the latest version and try again","reason":"Conflict","details":{"name":"n1","group":"coordination.k8s.io","kind":"leases"},"code":409}"#;
        assert_eq!(api(conflict), ApiError::Conflict);
        let busy = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"etcdserver: request timed out","reason":"InternalError","code":500}"#;
        assert!(
            matches!(api(busy), ApiError::Unavailable(m) if m.contains("500") && m.contains("timed out"))
        );
    }

    /// The answers a caller waits on or relists for, with the server's own numbers.
    #[test]
    fn throttling_expiry_and_refusals_keep_what_the_server_said() {
        // API Priority and Fairness rejecting a request (apierrors.NewTooManyRequests).
        let shed = StatusError::from_status(&status(
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Too many requests, please try again later.","reason":"TooManyRequests","details":{"retryAfterSeconds":4},"code":429}"#,
        ));
        assert_eq!(shed.retry_after(), Some(Duration::from_secs(4)));
        assert_eq!(
            shed.to_string(),
            "429 TooManyRequests: Too many requests, please try again later. (retry after 4 s)"
        );
        assert!(
            matches!(ApiError::from(shed), ApiError::Unavailable(m) if m.contains("retry after 4 s"))
        );
        let bare = StatusError::from_status(&status(
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"slow down","reason":"TooManyRequests","code":429}"#,
        ));
        assert_eq!(bare.retry_after(), None);
        let gone = StatusError::from_status(&status(
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 5 (120)","reason":"Expired","code":410}"#,
        ));
        assert_eq!(
            gone,
            StatusError::Gone("too old resource version: 5 (120)".into())
        );
        let invalid = StatusError::from_status(&status(
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Lease.coordination.k8s.io \"n1\" is invalid: spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0","reason":"Invalid","code":422}"#,
        ));
        assert!(
            matches!(&invalid, StatusError::Refused { code: 422, .. }),
            "{invalid}"
        );
        let down = StatusError::from_status(&status(
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server is currently unable to handle the request","reason":"ServiceUnavailable","code":503}"#,
        ));
        assert!(
            matches!(&down, StatusError::Server { code: 503, .. }),
            "{down}"
        );
    }
}
