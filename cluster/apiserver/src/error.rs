//! The API server's one error type, and its rendering as a Kubernetes `Status`: every
//! failure a client sees has the code, reason, message and details that kube-apiserver
//! would give for it (clients such as kubectl and client-go branch on the reason).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::registry::ResourceType;

/// One problem with a field of an object, as a 422 `Invalid` lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path, e.g. `spec.template.spec.containers[0].image`.
    pub field: String,
    /// What kind of problem (`FieldValueRequired`, `FieldValueInvalid`, …).
    pub reason: FieldReason,
    /// The text after the field, e.g. `Required value` or `Invalid value: "x": …`.
    pub message: String,
}

/// The kinds of field problems Kubernetes distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldReason {
    /// `Required value`.
    Required,
    /// `Invalid value: …`.
    Invalid,
    /// `Unsupported value: …`.
    NotSupported,
    /// `Duplicate value: …`.
    Duplicate,
    /// `Forbidden`.
    Forbidden,
    /// `Too long`.
    TooLong,
    /// A field the schema does not know (strict field validation).
    UnknownField,
}

impl FieldReason {
    fn cause(self) -> &'static str {
        match self {
            FieldReason::Required => "FieldValueRequired",
            FieldReason::Invalid => "FieldValueInvalid",
            FieldReason::NotSupported => "FieldValueNotSupported",
            FieldReason::Duplicate => "FieldValueDuplicate",
            FieldReason::Forbidden => "FieldValueForbidden",
            FieldReason::TooLong => "FieldValueTooLong",
            FieldReason::UnknownField => "FieldValueInvalid",
        }
    }
}

/// How a value is quoted in field messages: strings in double quotes, numbers and
/// booleans bare, anything else as JSON.
pub fn quote(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

impl FieldError {
    /// `field: Required value`.
    pub fn required(field: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: FieldReason::Required,
            message: "Required value".into(),
        }
    }

    /// `field: Required value: detail`.
    pub fn required_because(field: impl Into<String>, detail: &str) -> Self {
        Self {
            field: field.into(),
            reason: FieldReason::Required,
            message: format!("Required value: {detail}"),
        }
    }

    /// `field: Invalid value: <value>: detail`.
    pub fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> Self {
        Self {
            field: field.into(),
            reason: FieldReason::Invalid,
            message: format!("Invalid value: {}: {detail}", quote(value)),
        }
    }

    /// `field: Unsupported value: <value>: supported values: "a", "b"`.
    pub fn not_supported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Self {
            field: field.into(),
            reason: FieldReason::NotSupported,
            message: format!(
                "Unsupported value: {}: supported values: {}",
                quote(value),
                list.join(", ")
            ),
        }
    }

    /// `field: Duplicate value: <value>`.
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        Self {
            field: field.into(),
            reason: FieldReason::Duplicate,
            message: format!("Duplicate value: {}", quote(value)),
        }
    }

    /// `field: Forbidden: detail`.
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        Self {
            field: field.into(),
            reason: FieldReason::Forbidden,
            message: format!("Forbidden: {detail}"),
        }
    }

    /// An unknown field under strict field validation.
    pub fn unknown(field: impl Into<String>) -> Self {
        let field = field.into();
        Self {
            message: format!("strict decoding error: unknown field {field:?}"),
            field,
            reason: FieldReason::UnknownField,
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.reason == FieldReason::UnknownField {
            return write!(f, "{}", self.message);
        }
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Everything a request can fail with. Each variant maps to one Kubernetes status
/// reason; [`ApiError::status`] renders it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request itself is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no valid credentials.
    #[error("Unauthorized")]
    Unauthorized,
    /// 403: the user may not do this.
    #[error("{message}")]
    Forbidden {
        /// The full message (`pods is forbidden: User "bob" cannot …`).
        message: String,
        /// The resource (plural) and group named in `details`.
        resource: String,
        /// The API group.
        group: String,
        /// The object's name, if any.
        name: Option<String>,
    },
    /// 404: no such object.
    #[error("{resource} {name:?} not found")]
    NotFound {
        /// The resource, qualified with its group (`deployments.apps`).
        resource: String,
        /// Its plural, for `details.kind`.
        kind: String,
        /// Its group.
        group: String,
        /// The name.
        name: String,
    },
    /// 404: no such path (unknown group, version or resource).
    #[error("the server could not find the requested resource")]
    NoSuchPath,
    /// 405: the resource does not take this verb.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 406: only JSON (and YAML) is spoken.
    #[error("only the following media types are accepted: application/json, application/yaml")]
    NotAcceptable,
    /// 409: the object already exists.
    #[error("{message}")]
    AlreadyExists {
        /// `pods "x" already exists`.
        message: String,
        /// Its plural.
        kind: String,
        /// Its group.
        group: String,
        /// The name.
        name: String,
    },
    /// 409: a stale resourceVersion or a failed precondition.
    #[error("{message}")]
    Conflict {
        /// The message.
        message: String,
        /// Its plural.
        kind: String,
        /// Its group.
        group: String,
        /// The name.
        name: String,
        /// Causes (server-side apply field conflicts).
        causes: Vec<(String, String, String)>,
    },
    /// 410: history that was asked for is compacted.
    #[error("{0}")]
    Expired(String),
    /// 413: the body is too large.
    #[error("Request entity too large: {0}")]
    TooLarge(String),
    /// 415: a body in a format the endpoint does not take.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: the object is invalid.
    #[error("{}", invalid_message(kind, group, name, causes))]
    Invalid {
        /// The object's kind (`Deployment`).
        kind: String,
        /// Its group.
        group: String,
        /// Its name.
        name: String,
        /// Every problem found.
        causes: Vec<FieldError>,
    },
    /// 500: the store or the server failed.
    #[error("Internal error occurred: {0}")]
    Internal(String),
    /// 503: no store leader, or the store is not running.
    #[error("{0}")]
    Unavailable(String),
    /// 504: a wait (a resourceVersion from the future) ran out.
    #[error("Timeout: {0}")]
    Timeout(String),
}

fn invalid_message(kind: &str, group: &str, name: &str, causes: &[FieldError]) -> String {
    let qualified = if group.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}.{group}")
    };
    let mut seen = Vec::new();
    for cause in causes {
        let text = cause.to_string();
        if !seen.contains(&text) {
            seen.push(text);
        }
    }
    let list = if seen.len() == 1 {
        seen.remove(0)
    } else {
        format!("[{}]", seen.join(", "))
    };
    format!("{qualified} {name:?} is invalid: {list}")
}

impl ApiError {
    /// 404 for `name` of `resource`.
    pub fn not_found(resource: &ResourceType, name: &str) -> Self {
        ApiError::NotFound {
            resource: resource.qualified_plural(),
            kind: resource.plural.clone(),
            group: resource.group.clone(),
            name: name.to_owned(),
        }
    }

    /// 409 AlreadyExists for `name` of `resource`.
    pub fn already_exists(resource: &ResourceType, name: &str) -> Self {
        ApiError::AlreadyExists {
            message: format!("{} {name:?} already exists", resource.qualified_plural()),
            kind: resource.plural.clone(),
            group: resource.group.clone(),
            name: name.to_owned(),
        }
    }

    /// 409 Conflict: the object changed since the client read it.
    pub fn conflict(resource: &ResourceType, name: &str) -> Self {
        Self::conflict_because(
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 409 Conflict with a reason of its own.
    pub fn conflict_because(resource: &ResourceType, name: &str, why: &str) -> Self {
        ApiError::Conflict {
            message: format!(
                "Operation cannot be fulfilled on {} {name:?}: {why}",
                resource.qualified_plural()
            ),
            kind: resource.plural.clone(),
            group: resource.group.clone(),
            name: name.to_owned(),
            causes: Vec::new(),
        }
    }

    /// 422 listing `causes` for the object `name` of `resource`.
    pub fn invalid(resource: &ResourceType, name: &str, causes: Vec<FieldError>) -> Self {
        ApiError::Invalid {
            kind: resource.kind.clone(),
            group: resource.group.clone(),
            name: name.to_owned(),
            causes,
        }
    }

    /// The HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::Forbidden { .. } => 403,
            ApiError::NotFound { .. } | ApiError::NoSuchPath => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::NotAcceptable => 406,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } => 409,
            ApiError::Expired(_) => 410,
            ApiError::TooLarge(_) => 413,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::Invalid { .. } => 422,
            ApiError::Internal(_) => 500,
            ApiError::Unavailable(_) => 503,
            ApiError::Timeout(_) => 504,
        }
    }

    /// The `reason` field.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Forbidden { .. } => "Forbidden",
            ApiError::NotFound { .. } | ApiError::NoSuchPath => "NotFound",
            ApiError::MethodNotAllowed(_) => "MethodNotAllowed",
            ApiError::NotAcceptable => "NotAcceptable",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } => "Conflict",
            ApiError::Expired(_) => "Expired",
            ApiError::TooLarge(_) => "RequestEntityTooLarge",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::Internal(_) => "InternalError",
            ApiError::Unavailable(_) => "ServiceUnavailable",
            ApiError::Timeout(_) => "Timeout",
        }
    }

    /// The error as a `Status` object.
    pub fn status(&self) -> Value {
        let mut details = serde_json::Map::new();
        let mut put = |key: &str, value: &str| {
            if !value.is_empty() {
                details.insert(key.into(), Value::String(value.to_owned()));
            }
        };
        match self {
            ApiError::NotFound {
                kind, group, name, ..
            }
            | ApiError::AlreadyExists {
                kind, group, name, ..
            } => {
                put("name", name);
                put("group", group);
                put("kind", kind);
            }
            ApiError::Forbidden {
                resource,
                group,
                name,
                ..
            } => {
                put("name", name.as_deref().unwrap_or(""));
                put("group", group);
                put("kind", resource);
            }
            ApiError::Conflict {
                kind,
                group,
                name,
                causes,
                ..
            } => {
                put("name", name);
                put("group", group);
                put("kind", kind);
                if !causes.is_empty() {
                    details.insert(
                        "causes".into(),
                        causes
                            .iter()
                            .map(|(reason, message, field)| {
                                json!({"reason": reason, "message": message, "field": field})
                            })
                            .collect(),
                    );
                }
            }
            ApiError::Invalid {
                kind,
                group,
                name,
                causes,
            } => {
                put("name", name);
                put("group", group);
                put("kind", kind);
                details.insert(
                    "causes".into(),
                    causes
                        .iter()
                        .map(|c| {
                            json!({"reason": c.reason.cause(), "message": c.message, "field": c.field})
                        })
                        .collect(),
                );
            }
            ApiError::Internal(message) => {
                details.insert("causes".into(), json!([{ "message": message }]));
            }
            _ => {}
        }
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        });
        if !details.is_empty() {
            status["details"] = Value::Object(details);
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = self.status().to_string();
        (
            code,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

impl From<cairn_store::protocol::ClientError> for ApiError {
    fn from(err: cairn_store::protocol::ClientError) -> Self {
        use cairn_store::protocol::ClientError;
        match err {
            ClientError::NoLeader(why)
            | ClientError::Unavailable(why)
            | ClientError::NotSent(why) => {
                ApiError::Unavailable(format!("the cluster store is unavailable: {why}"))
            }
            ClientError::Store(cairn_store::StoreError::Compacted {
                requested,
                compacted,
            }) => ApiError::Expired(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            other => ApiError::Internal(format!("the cluster store: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_status_names_each_field_as_kube_apiserver_does() {
        let err = ApiError::Invalid {
            kind: "Deployment".into(),
            group: "apps".into(),
            name: "x".into(),
            causes: vec![FieldError::required(
                "spec.template.spec.containers[0].image",
            )],
        };
        let status = err.status();
        assert_eq!(
            status["message"],
            "Deployment.apps \"x\" is invalid: spec.template.spec.containers[0].image: Required value"
        );
        assert_eq!(status["code"], 422);
        assert_eq!(
            status["details"]["causes"][0]["reason"],
            "FieldValueRequired"
        );
        assert_eq!(status["details"]["causes"][0]["message"], "Required value");
        let two = ApiError::Invalid {
            kind: "Pod".into(),
            group: String::new(),
            name: "p".into(),
            causes: vec![
                FieldError::required("spec.containers"),
                FieldError::invalid("metadata.name", &json!("Bad"), "must be lower case"),
            ],
        };
        assert_eq!(
            two.status()["message"],
            "Pod \"p\" is invalid: [spec.containers: Required value, metadata.name: Invalid value: \"Bad\": must be lower case]"
        );
        assert!(two.status()["details"].get("group").is_none());
    }
}
