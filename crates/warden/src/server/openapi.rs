//! `GET /openapi.json`: an OpenAPI 3.1 description of every warden endpoint, built with
//! utoipa's types from the table below. The table is checked against the router's source
//! (`tests/openapi.rs`: every `.route(…)` in `server/` is here, and every entry here is routed),
//! so the description cannot drift from the code; schemathesis runs it against a live warden.
//!
//! Answers are described by their content types and, for errors, by their shapes: OpenAI's
//! `{"error": {"message", "type", "code"}}` everywhere but Ollama's dialect, whose errors are
//! `{"error": "message"}`. Request and answer bodies are any JSON object: their fields are
//! OpenAI's and Ollama's own, documented by them.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Required, ResponseBuilder,
    ResponsesBuilder,
};

/// What a request carries.
#[derive(Clone, Copy, PartialEq)]
enum In {
    Nothing,
    /// A JSON object.
    Json,
    /// `multipart/form-data` with `purpose` and `file` (the Batch API's upload).
    Upload,
    /// Anything (passthrough to a service).
    Any,
}

/// What a success carries.
#[derive(Clone, Copy, PartialEq)]
enum Out {
    Json,
    /// JSON, or server-sent events when the request asks for a stream.
    JsonOrEvents,
    /// JSON, or NDJSON when the request asks for a stream (Ollama).
    JsonOrLines,
    Events,
    Text,
    Html,
    Metrics,
    Bytes,
    /// Whatever the service answers (passthrough).
    Any,
}

/// Who may call it.
#[derive(Clone, Copy, PartialEq)]
enum Who {
    Anyone,
    /// A client key (`[clients]`) or the admin token; anyone in open mode.
    Client,
    Admin,
}

/// One operation. `path` is written as the router writes it (`{name}`, `{*path}`).
struct Op(&'static str, &'static str, &'static str, &'static str, In, Out, Who);

use In::{Any as AnyIn, Json as JsonIn, Nothing, Upload};
use Out::{Any as AnyOut, Bytes, Events, Html, Json, JsonOrEvents, JsonOrLines, Metrics, Text};
use Who::{Admin, Anyone, Client};

#[rustfmt::skip]
const OPS: &[Op] = &[
    Op("get", "/health", "meta", "warden is up", Nothing, Json, Anyone),
    Op("get", "/metrics", "meta", "Prometheus metrics (OpenMetrics text)", Nothing, Metrics, Anyone),
    Op("get", "/status", "meta", "version, uptime, each service's state", Nothing, Json, Anyone),
    Op("get", "/ui", "meta", "the dashboard", Nothing, Html, Anyone),
    Op("get", "/openapi.json", "meta", "this description", Nothing, Json, Anyone),
    Op("get", "/v1/models", "openai", "every configured and discovered model", Nothing, Json, Client),
    Op("get", "/v1/models/{*id}", "openai", "one model", Nothing, Json, Client),
    Op("post", "/v1/chat/completions", "openai", "a chat completion, routed by the body's model", JsonIn, JsonOrEvents, Client),
    Op("post", "/v1/completions", "openai", "a completion, routed by the body's model", JsonIn, JsonOrEvents, Client),
    Op("post", "/v1/embeddings", "openai", "embeddings, routed by the body's model", JsonIn, Json, Client),
    Op("post", "/v1/files", "batch", "upload a batch input file (JSONL)", Upload, Json, Client),
    Op("get", "/v1/files", "batch", "the caller's files", Nothing, Json, Client),
    Op("get", "/v1/files/{id}", "batch", "one file", Nothing, Json, Client),
    Op("delete", "/v1/files/{id}", "batch", "delete a file", Nothing, Json, Client),
    Op("get", "/v1/files/{id}/content", "batch", "a file's content", Nothing, Bytes, Client),
    Op("post", "/v1/batches", "batch", "create a batch", JsonIn, Json, Client),
    Op("get", "/v1/batches", "batch", "the caller's batches", Nothing, Json, Client),
    Op("get", "/v1/batches/{id}", "batch", "one batch", Nothing, Json, Client),
    Op("post", "/v1/batches/{id}/cancel", "batch", "cancel a batch", Nothing, Json, Client),
    Op("any", "/svc/{service}", "passthrough", "any request to a service, after waking it", AnyIn, AnyOut, Client),
    Op("any", "/svc/{service}/{*path}", "passthrough", "any request to a service, after waking it", AnyIn, AnyOut, Client),
    Op("get", "/", "ollama", "Ollama's greeting", Nothing, Text, Client),
    Op("get", "/api/version", "ollama", "Ollama's version answer", Nothing, Json, Client),
    Op("get", "/api/tags", "ollama", "models, in Ollama's shape", Nothing, Json, Client),
    Op("get", "/api/ps", "ollama", "loaded models, in Ollama's shape", Nothing, Json, Client),
    Op("post", "/api/show", "ollama", "one model, in Ollama's shape", JsonIn, Json, Client),
    Op("post", "/api/chat", "ollama", "Ollama's chat", JsonIn, JsonOrLines, Client),
    Op("post", "/api/generate", "ollama", "Ollama's generate", JsonIn, JsonOrLines, Client),
    Op("post", "/api/embed", "ollama", "Ollama's embed", JsonIn, Json, Client),
    Op("post", "/api/embeddings", "ollama", "Ollama's legacy embeddings", JsonIn, Json, Client),
    Op("post", "/api/pull", "ollama", "not supported: models come from the config (501)", JsonIn, Json, Client),
    Op("post", "/api/push", "ollama", "not supported (501)", JsonIn, Json, Client),
    Op("post", "/api/create", "ollama", "not supported (501)", JsonIn, Json, Client),
    Op("post", "/api/copy", "ollama", "not supported (501)", JsonIn, Json, Client),
    Op("delete", "/api/delete", "ollama", "not supported (501)", JsonIn, Json, Client),
    Op("get", "/api/queue/status", "resources", "the priority queue", Nothing, Json, Client),
    Op("get", "/api/queue/position/{id}", "resources", "a request's place", Nothing, Json, Client),
    Op("post", "/api/queue/enqueue", "resources", "run a request as an async job", JsonIn, Json, Client),
    Op("delete", "/api/queue/{id}", "resources", "take a request out of the queue", Nothing, Json, Client),
    Op("post", "/api/execute", "resources", "run a request now", JsonIn, JsonOrEvents, Client),
    Op("get", "/api/execution/{id}", "resources", "a job's or request's outcome", Nothing, Json, Client),
    Op("post", "/api/execution/{id}/cancel", "resources", "cancel a job", Nothing, Json, Client),
    Op("get", "/api/usage/{client}", "resources", "a client's usage this month", Nothing, Json, Client),
    Op("get", "/api/usage/{client}/current", "resources", "a client's budget now", Nothing, Json, Client),
    Op("post", "/api/cost/estimate", "resources", "what a request would cost", JsonIn, Json, Client),
    Op("get", "/api/cost/{id}", "resources", "what a request cost", Nothing, Json, Client),
    Op("get", "/api/resources/availability", "resources", "pools, budget and load", Nothing, Json, Client),
    Op("post", "/api/resources/check", "resources", "could a request run now", JsonIn, Json, Client),
    Op("post", "/api/resources/estimate", "resources", "what a request would cost", JsonIn, Json, Client),
    Op("get", "/api/optimize/stats/{client}", "optimizer", "this month's savings", Nothing, Json, Client),
    Op("post", "/api/optimize/analyze", "optimizer", "which strategies would apply to a request", JsonIn, Json, Client),
    Op("get", "/api/optimize/recommendations/{client}", "optimizer", "what would save money", Nothing, Json, Client),
    Op("post", "/internal/reserve", "internal", "hold budget for work outside the request path", JsonIn, Json, Client),
    Op("post", "/internal/release", "internal", "release a hold", JsonIn, Json, Client),
    Op("post", "/internal/consume", "internal", "settle a hold", JsonIn, Json, Client),
    Op("get", "/admin/services", "admin", "every service", Nothing, Json, Admin),
    Op("post", "/admin/services/{name}/start", "admin", "wake a service and wait until ready", Nothing, Json, Admin),
    Op("post", "/admin/services/{name}/stop", "admin", "stop a service", Nothing, Json, Admin),
    Op("post", "/admin/services/{name}/idle-sleep", "admin", "turn a service's idle sleep on or off", JsonIn, Json, Admin),
    Op("get", "/admin/services/{name}/logs", "admin", "the last lines of a service's log file", Nothing, Json, Admin),
    Op("post", "/admin/models/{name}/unload", "admin", "unload a model", Nothing, Json, Admin),
    Op("get", "/admin/idle-status", "admin", "idle settings and countdowns", Nothing, Json, Admin),
    Op("post", "/admin/settings", "admin", "change idle settings", JsonIn, Json, Admin),
    Op("get", "/admin/resources", "admin", "memory: capacity, use, footprints", Nothing, Json, Admin),
    Op("get", "/admin/plan/{service}", "admin", "what waking a service would offload", Nothing, Json, Admin),
    Op("get", "/admin/saved-state", "admin", "offloaded services to reload", Nothing, Json, Admin),
    Op("delete", "/admin/saved-state", "admin", "forget the saved state", Nothing, Json, Admin),
    Op("post", "/admin/reload/wait", "admin", "wait for reloads of offloaded services", Nothing, Json, Admin),
    Op("get", "/admin/pressure", "admin", "the pressure monitor", Nothing, Json, Admin),
    Op("get", "/admin/performance", "admin", "each model's figures", Nothing, Json, Admin),
    Op("get", "/admin/events", "admin", "live events (server-sent)", Nothing, Events, Admin),
    Op("post", "/admin/reload", "admin", "reload the config file", Nothing, Json, Admin),
    Op("post", "/admin/scheduler/start", "admin", "resume the queue", Nothing, Json, Admin),
    Op("post", "/admin/scheduler/stop", "admin", "pause the queue", Nothing, Json, Admin),
    Op("get", "/admin/alerts", "admin", "recent alerts", Nothing, Json, Admin),
    Op("get", "/admin/queue", "admin", "the priority queue", Nothing, Json, Admin),
    Op("get", "/admin/usage/{client}", "admin", "a client's usage", Nothing, Json, Admin),
    Op("get", "/admin/requests", "admin", "the latest finished requests", Nothing, Json, Admin),
    Op("get", "/admin/clients", "admin", "every client's budget and load", Nothing, Json, Admin),
];

/// Every (method, path) of the table, as the router writes them (for the drift test).
pub fn routes() -> Vec<(&'static str, &'static str)> {
    OPS.iter().map(|o| (o.0, o.1)).collect()
}

fn any_object() -> Schema {
    ObjectBuilder::new().schema_type(Type::Object).build().into()
}

/// Any JSON value (answers are objects or lists).
fn any_value() -> Schema {
    ObjectBuilder::new().schema_type(utoipa::openapi::schema::SchemaType::AnyValue).build().into()
}

fn string() -> Schema {
    ObjectBuilder::new().schema_type(Type::String).build().into()
}

/// OpenAI's error shape (and warden's everywhere but Ollama's dialect).
fn error_shape() -> Schema {
    let inner = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("message", string())
        .property("type", string())
        .required("message");
    ObjectBuilder::new().schema_type(Type::Object).property("error", inner).required("error").build().into()
}

/// Ollama's error shape.
fn ollama_error_shape() -> Schema {
    ObjectBuilder::new().schema_type(Type::Object).property("error", string()).required("error").build().into()
}

fn content(schema: Schema) -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(schema)).build()
}

fn operation(op: &Op) -> utoipa::openapi::path::Operation {
    let Op(_, path, tag, summary, input, output, who) = *op;
    let mut b = OperationBuilder::new().tag(tag).summary(Some(summary));
    for name in path.split('{').skip(1).filter_map(|p| p.split('}').next()) {
        let name = name.trim_start_matches('*');
        let param = ParameterBuilder::new()
            .name(name)
            .parameter_in(ParameterIn::Path)
            .required(Required::True)
            .schema(Some(string()))
            .build();
        b = b.parameter(param);
    }
    let body = match input {
        Nothing => None,
        JsonIn => Some(
            RequestBodyBuilder::new().content("application/json", content(any_object())).required(Some(Required::True)),
        ),
        Upload => {
            let form = ObjectBuilder::new()
                .schema_type(Type::Object)
                .property("purpose", string())
                .property(
                    "file",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Binary))),
                )
                .required("purpose")
                .required("file");
            Some(
                RequestBodyBuilder::new()
                    .content("multipart/form-data", content(form.build().into()))
                    .required(Some(Required::True)),
            )
        }
        AnyIn => Some(RequestBodyBuilder::new().content("*/*", ContentBuilder::new().build())),
    };
    b = b.request_body(body.map(|b| b.build()));
    let ok = match output {
        Json => ResponseBuilder::new().description("the answer").content("application/json", content(any_value())),
        JsonOrEvents => ResponseBuilder::new()
            .description("the answer; a stream when asked")
            .content("application/json", content(any_value()))
            .content("text/event-stream", content(string())),
        JsonOrLines => ResponseBuilder::new()
            .description("the answer; a stream when asked")
            .content("application/json", content(any_value()))
            .content("application/x-ndjson", content(string())),
        Events => {
            ResponseBuilder::new().description("server-sent events").content("text/event-stream", content(string()))
        }
        Text => ResponseBuilder::new().description("text").content("text/plain", content(string())),
        Html => ResponseBuilder::new().description("the page").content("text/html", content(string())),
        Metrics => ResponseBuilder::new()
            .description("OpenMetrics text")
            .content("application/openmetrics-text", content(string())),
        Bytes => ResponseBuilder::new().description("the bytes").content("application/octet-stream", content(string())),
        AnyOut => ResponseBuilder::new().description("the service's answer, as it is"),
    };
    let error = if tag == "ollama" { ollama_error_shape() } else { error_shape() };
    let errors = |what: &str| {
        ResponseBuilder::new().description(what).content("application/json", content(error.clone())).build()
    };
    let mut responses = ResponsesBuilder::new();
    responses = match output {
        // A passthrough answers whatever the service answers.
        AnyOut => responses.response("default", ok.build()),
        _ => responses
            .response(if path == "/api/queue/enqueue" { "202" } else { "200" }, ok.build())
            .response("4XX", errors("refused: the message says why"))
            .response("5XX", errors("a service could not answer")),
    };
    b = b.responses(responses.build());
    if who != Anyone {
        b = b.security(SecurityRequirement::new("bearer", Vec::<String>::new()));
    }
    b.build()
}

fn method(m: &str) -> Vec<HttpMethod> {
    match m {
        "get" => vec![HttpMethod::Get],
        "post" => vec![HttpMethod::Post],
        "delete" => vec![HttpMethod::Delete],
        _ => vec![HttpMethod::Get, HttpMethod::Post, HttpMethod::Put, HttpMethod::Delete, HttpMethod::Patch],
    }
}

/// The description, built once.
pub fn document() -> &'static OpenApi {
    static DOC: OnceLock<OpenApi> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut paths = PathsBuilder::new();
        for op in OPS {
            let path = op.1.replace("{*", "{");
            for m in method(op.0) {
                paths = paths.path(path.clone(), PathItem::new(m, operation(op)));
            }
        }
        let bearer = SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
        OpenApiBuilder::new()
            .info(
                InfoBuilder::new()
                    .title("warden")
                    .version(env!("CARGO_PKG_VERSION"))
                    .description(Some(
                        "Wakes AI services on demand, puts idle ones to sleep, and manages what they cost.",
                    ))
                    .build(),
            )
            .paths(paths.build())
            .components(Some(ComponentsBuilder::new().security_scheme("bearer", bearer).build()))
            .build()
    })
}

pub async fn openapi_json() -> impl IntoResponse {
    let text = serde_json::to_string(document()).expect("serializes");
    ([(header::CONTENT_TYPE, "application/json")], text)
}
