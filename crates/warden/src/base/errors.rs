//! Every error a client can see, mapped in one place to a status and an OpenAI-shaped body:
//! `{"error": {"message", "type", "code"}}`.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Why a request could not get its service (the owner task's answer to an acquire).
#[derive(Debug, Clone)]
pub enum Unavailable {
    /// More requests are held than `max_queue`.
    QueueFull { retry_after: Duration },
    /// The start failed (or a previous one did and we are backing off). `permanent`: it will
    /// fail the same way until the config or the machine changes (no such program, no such
    /// image, too big to ever fit), so the client is not told to retry.
    StartFailed { reason: String, log_tail: Vec<String>, retry_after: Duration, permanent: bool },
    /// warden is shutting down or the service was stopped while the request waited.
    Stopped { reason: String },
}

#[derive(Debug)]
pub enum ApiError {
    BadJson(String),
    BadRequest(String),
    MissingModel,
    UnknownModel {
        model: String,
        known: Vec<String>,
    },
    UnknownService {
        service: String,
        known: Vec<String>,
    },
    BodyTooLarge {
        limit: usize,
    },
    Unauthorized,
    NotFound(String),
    Unavailable {
        service: String,
        why: Unavailable,
    },
    BadGateway {
        service: String,
        detail: String,
    },
    /// An https upstream failed its TLS handshake (certificate, name, protocol).
    UpstreamTls {
        service: String,
        detail: String,
    },
    /// The operation clashes with one under way.
    Conflict(String),
    /// The client may not use this model.
    Forbidden {
        client: String,
        model: String,
    },
    /// A client asked about another client's usage or requests.
    NotYours {
        client: String,
        what: String,
    },
    /// The request could take the client past its monthly budget.
    OverBudget {
        client: String,
        over: policy::budget::OverBudget,
    },
    /// The priority queue holds `limit` requests already.
    QueueFull {
        limit: usize,
    },
    /// A token-bucket pool has too little left for this now.
    PoolShort {
        pool: String,
        wait: Duration,
    },
    /// The service sent no response headers within its `response_timeout`.
    BackendTimeout {
        service: String,
        after: Duration,
    },
    /// The route exists, but not for this method.
    MethodNotAllowed {
        method: String,
        path: String,
    },
    /// The request target is longer than warden accepts.
    UriTooLong {
        limit: usize,
    },
    /// The request headers are larger than warden accepts.
    HeadersTooLarge {
        limit: usize,
    },
    /// warden already serves `server.max_connections` client connections.
    TooManyConnections {
        limit: usize,
    },
    /// warden's own failure (its usage database, say): nothing the client did.
    Internal(String),
    /// The request waited its `queue_timeout` for its turn.
    QueueTimeout {
        waited: Duration,
        class: &'static str,
    },
    /// A config reload was refused; the running config stays.
    InvalidConfig(String),
    /// Replicas: the shared state (Redis) cannot be reached, and `on_unavailable = "refuse"`.
    SharedStateUnavailable {
        url: String,
        detail: String,
    },
}

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadJson(_) | ApiError::BadRequest(_) | ApiError::MissingModel | ApiError::InvalidConfig(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::UnknownModel { .. } | ApiError::UnknownService { .. } | ApiError::NotFound(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ApiError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Unavailable { why: Unavailable::StartFailed { permanent: true, .. }, .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ApiError::Unavailable { .. }
            | ApiError::TooManyConnections { .. }
            | ApiError::SharedStateUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadGateway { .. } | ApiError::UpstreamTls { .. } => StatusCode::BAD_GATEWAY,
            ApiError::BackendTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Forbidden { .. } | ApiError::NotYours { .. } => StatusCode::FORBIDDEN,
            ApiError::QueueFull { .. } | ApiError::PoolShort { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::OverBudget { .. } => StatusCode::PAYMENT_REQUIRED,
            ApiError::QueueTimeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadJson(_) => "invalid_json",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::InvalidConfig(_) => "invalid_config",
            ApiError::MissingModel => "missing_model",
            ApiError::UnknownModel { .. } => "model_not_found",
            ApiError::UnknownService { .. } => "service_not_found",
            ApiError::NotFound(_) => "not_found",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::UriTooLong { .. } => "uri_too_long",
            ApiError::HeadersTooLarge { .. } => "headers_too_large",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Unavailable { why: Unavailable::QueueFull { .. }, .. } => "queue_full",
            ApiError::Unavailable { why: Unavailable::StartFailed { permanent: true, .. }, .. } => {
                "service_cannot_start"
            }
            ApiError::Unavailable { why: Unavailable::StartFailed { .. }, .. } => "service_start_failed",
            ApiError::Unavailable { why: Unavailable::Stopped { .. }, .. } => "service_stopped",
            ApiError::BadGateway { .. } => "backend_error",
            ApiError::UpstreamTls { .. } => "upstream_tls_error",
            ApiError::BackendTimeout { .. } => "backend_timeout",
            ApiError::Internal(_) => "internal_error",
            ApiError::TooManyConnections { .. } => "too_many_connections",
            ApiError::Conflict(_) => "conflict",
            ApiError::Forbidden { .. } => "model_not_allowed",
            ApiError::NotYours { .. } => "not_your_client",
            ApiError::OverBudget { .. } => "budget_exceeded",
            ApiError::QueueFull { .. } => "priority_queue_full",
            ApiError::QueueTimeout { .. } => "queue_timeout",
            ApiError::PoolShort { .. } => "rate_limited",
            ApiError::SharedStateUnavailable { .. } => "shared_state_unavailable",
        }
    }

    fn kind(&self) -> &'static str {
        match self.status_code() {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::NOT_FOUND => "not_found_error",
            s if s.is_client_error() => "invalid_request_error",
            _ => "server_error",
        }
    }

    pub fn message(&self) -> String {
        /// "known models: a, b", or that there are none (an empty config, or a typo'd file).
        fn known_list(what: &str, known: &[String]) -> String {
            match known.is_empty() {
                true => format!("the config names no {what}"),
                false => format!("known {what}: {}", known.join(", ")),
            }
        }
        match self {
            ApiError::BadJson(e) => format!("request body is not valid JSON: {e}"),
            ApiError::BadRequest(m) | ApiError::InvalidConfig(m) => m.clone(),
            ApiError::MissingModel => "request body has no \"model\" string".into(),
            ApiError::UnknownModel { model, known } => {
                format!("model {model:?} is not configured; {}", known_list("models", known))
            }
            ApiError::UnknownService { service, known } => {
                format!("service {service:?} is not configured; {}", known_list("services", known))
            }
            ApiError::NotFound(what) => format!("{what} not found"),
            ApiError::BodyTooLarge { limit } => format!("request body exceeds max_body ({limit} bytes)"),
            ApiError::MethodNotAllowed { method, path } => format!("{path} does not take {method}"),
            ApiError::UriTooLong { limit } => format!("request target is longer than {limit} bytes"),
            ApiError::HeadersTooLarge { limit } => format!("request headers are larger than {limit} bytes"),
            ApiError::Unauthorized => "missing or wrong bearer token".into(),
            ApiError::Unavailable { service, why } => match why {
                Unavailable::QueueFull { .. } => {
                    format!("service {service} is starting and its queue is full; retry later")
                }
                Unavailable::StartFailed { reason, log_tail, permanent, .. } => {
                    let mut m = if *permanent {
                        format!(
                            "service {service} cannot start: {reason}; this will not pass by retrying: fix the \
                             service's config (services.{service}) or the machine"
                        )
                    } else {
                        format!("service {service} failed to start: {reason}")
                    };
                    if !log_tail.is_empty() {
                        m.push_str("; last log lines:\n");
                        m.push_str(&log_tail.join("\n"));
                    }
                    m
                }
                Unavailable::Stopped { reason } => format!("service {service} is unavailable: {reason}"),
            },
            ApiError::BadGateway { service, detail } => format!("service {service} failed mid-request: {detail}"),
            ApiError::UpstreamTls { service, detail } => {
                format!("service {service} cannot be reached safely: {detail}")
            }
            ApiError::BackendTimeout { service, after } => {
                format!("service {service} sent no response within its response_timeout ({:.1} s)", after.as_secs_f64())
            }
            ApiError::Conflict(m) => m.clone(),
            ApiError::Internal(m) => format!("warden failed: {m}"),
            ApiError::TooManyConnections { limit } => {
                format!("warden already serves {limit} connections (server.max_connections); retry later")
            }
            ApiError::Forbidden { client, model } => format!("client {client} may not use model {model:?}"),
            ApiError::NotYours { client, what } => {
                format!("client {client} may not see {what}: a client sees only its own usage and requests")
            }
            ApiError::OverBudget { client, over } => {
                use policy::budget::micros_to_usd as usd;
                format!(
                    "client {client} has no budget left for this request: monthly budget ${:.6}, spent ${:.6}, \
                     held for requests in flight ${:.6}, this request may cost up to ${:.6}; \
                     the budget resets at the start of next month (UTC)",
                    usd(over.limit),
                    usd(over.spent),
                    usd(over.reserved),
                    usd(over.asked)
                )
            }
            ApiError::QueueFull { limit } => {
                format!("{limit} requests are already waiting for their turn; retry later")
            }
            ApiError::PoolShort { pool, wait } => {
                format!("pool {pool} has too little left now; it refills enough in {} ms", wait.as_millis())
            }
            ApiError::QueueTimeout { waited, class } => format!(
                "request ({class} priority) waited {:.1} s for its turn without getting one; retry later",
                waited.as_secs_f64()
            ),
            ApiError::SharedStateUnavailable { url, detail } => format!(
                "warden's shared state (Redis at {url}) cannot be reached: {detail}; budgets, pools and limits \
                 are counted there, so nothing is admitted without it ([state].on_unavailable = \"refuse\"); \
                 retry shortly"
            ),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Unavailable { why: Unavailable::StartFailed { permanent: true, .. }, .. } => None,
            ApiError::Unavailable { why: Unavailable::QueueFull { retry_after }, .. }
            | ApiError::Unavailable { why: Unavailable::StartFailed { retry_after, .. }, .. } => Some(*retry_after),
            ApiError::Unavailable { why: Unavailable::Stopped { .. }, .. }
            | ApiError::QueueFull { .. }
            | ApiError::TooManyConnections { .. }
            | ApiError::SharedStateUnavailable { .. } => Some(Duration::from_secs(1)),
            ApiError::QueueTimeout { waited, .. } => Some((*waited / 10).max(Duration::from_secs(1))),
            ApiError::PoolShort { wait, .. } => Some(*wait),
            _ => None,
        }
    }
}

impl ApiError {
    /// The OpenAI-shaped error object: `{"error": {"message", "type", "code"}}`. Sent as a
    /// response body, or as the last event of a stream that could not be finished.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message(), "type": self.kind(), "code": self.code()}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body();
        let mut resp = (self.status_code(), Json(body)).into_response();
        if let Some(after) = self.retry_after() {
            // Whole seconds, rounded up: Retry-After has no fractions.
            let secs = after.as_millis().div_ceil(1000).max(1) as u64;
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self, ApiError::Unauthorized) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::ApiError;

    #[test]
    fn an_unknown_name_lists_the_known_ones_or_says_there_are_none() {
        let known = vec!["a".to_string(), "b".to_string()];
        let e = ApiError::UnknownModel { model: "x".into(), known };
        assert_eq!(e.message(), "model \"x\" is not configured; known models: a, b");
        let e = ApiError::UnknownService { service: "x".into(), known: vec![] };
        assert_eq!(e.message(), "service \"x\" is not configured; the config names no services");
    }
}
