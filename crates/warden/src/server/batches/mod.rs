//! The OpenAI Batch API: `/v1/files` (upload a JSONL input file, list, look up, read, delete)
//! and `/v1/batches` (create, list, look up, cancel), in OpenAI's shapes, so the official
//! clients work unchanged. A client sees only its own files and batches; the admin token sees
//! everyone's. The runner (`run`) sends each line through the pipeline.

mod run;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use policy::batch::Status;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::App;
use crate::base::caller::Caller;
use crate::base::errors::ApiError;
use crate::batch::{new_id, Batch, Counts, FileObject};
use crate::pipeline::Endpoint;
use crate::server::extract::{Path, Query};
use crate::server::parse_json;

pub use run::resume;

/// OpenAI's limit on a batch input file.
const MAX_FILE: usize = 200 << 20;
/// The owner recorded for the anonymous client (open mode, or the admin's own requests).
const ANONYMOUS: &str = "anonymous";
/// The only completion window OpenAI offers.
const WINDOW: &str = "24h";

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/files", post(upload).get(list_files).layer(DefaultBodyLimit::max(MAX_FILE + (64 << 10))))
        .route("/v1/files/{id}", get(get_file).delete(delete_file))
        .route("/v1/files/{id}/content", get(file_content))
        .route("/v1/batches", post(create).get(list_batches))
        .route("/v1/batches/{id}", get(get_batch))
        .route("/v1/batches/{id}/cancel", post(cancel))
}

fn owner_of(app: &App, caller: &Caller) -> String {
    caller.client.map_or_else(|| ANONYMOUS.to_string(), |i| app.config().clients[i].name.clone())
}

/// What `caller` may see: every owner's (admin) or its own.
fn scope(app: &App, caller: &Caller) -> Option<String> {
    (!caller.admin).then(|| owner_of(app, caller))
}

fn internal(e: String) -> ApiError {
    ApiError::Internal(e)
}

/// A file the caller may see; 404 otherwise (another client's file is not named as existing).
fn visible_file(app: &App, caller: &Caller, id: &str) -> Result<FileObject, ApiError> {
    match app.batches.file(id).map_err(internal)? {
        Some((owner, file)) if caller.admin || owner == owner_of(app, caller) => Ok(file),
        _ => Err(ApiError::NotFound(format!("file {id}"))),
    }
}

fn visible_batch(app: &App, caller: &Caller, id: &str) -> Result<Batch, ApiError> {
    match app.batches.batch(id).map_err(internal)? {
        Some((owner, batch)) if caller.admin || owner == owner_of(app, caller) => Ok(batch),
        _ => Err(ApiError::NotFound(format!("batch {id}"))),
    }
}

/// `POST /v1/files`: multipart with `purpose=batch` and `file`.
async fn upload(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    form: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Json<FileObject>, ApiError> {
    let mut form = form.map_err(|e| ApiError::BadRequest(format!("a multipart/form-data body is expected: {e}")))?;
    let bad =
        |e: axum::extract::multipart::MultipartError| ApiError::BadRequest(format!("invalid multipart body: {e}"));
    let (mut purpose, mut file) = (None, None);
    while let Some(field) = form.next_field().await.map_err(bad)? {
        match field.name() {
            Some("purpose") => purpose = Some(field.text().await.map_err(bad)?),
            Some("file") => {
                let name = field.file_name().unwrap_or("upload.jsonl").to_string();
                file = Some((name, field.bytes().await.map_err(bad)?));
            }
            _ => {}
        }
    }
    match purpose.as_deref() {
        Some("batch") => {}
        Some(p) => {
            return Err(ApiError::BadRequest(format!("purpose {p:?} is not supported: warden stores \"batch\" files")))
        }
        None => return Err(ApiError::BadRequest("missing the \"purpose\" field (\"batch\")".into())),
    }
    let (name, content) = file.ok_or_else(|| ApiError::BadRequest("missing the \"file\" field".into()))?;
    if content.len() > MAX_FILE {
        return Err(ApiError::BodyTooLarge { limit: MAX_FILE });
    }
    let owner = owner_of(&app, &caller);
    let stored = tokio::task::spawn_blocking(move || app.batches.put_file(&owner, "batch", &name, &content))
        .await
        .map_err(|e| internal(e.to_string()))?;
    Ok(Json(stored.map_err(internal)?))
}

#[derive(Deserialize)]
struct ListQuery {
    purpose: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

/// OpenAI's list page: items after the `after` id, at most `limit`.
fn page<T: serde::Serialize>(items: Vec<T>, id: impl Fn(&T) -> &str, q: &ListQuery, default: usize) -> Value {
    let start = match &q.after {
        Some(after) => items.iter().position(|x| id(x) == after).map_or(items.len(), |i| i + 1),
        None => 0,
    };
    let limit = q.limit.unwrap_or(default).clamp(1, 10_000);
    let has_more = items.len() > start + limit;
    let data: Vec<&T> = items.iter().skip(start).take(limit).collect();
    json!({
        "object": "list",
        "first_id": data.first().map(|x| id(x)),
        "last_id": data.last().map(|x| id(x)),
        "has_more": has_more,
        "data": data,
    })
}

async fn list_files(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let mut files = app.batches.files(scope(&app, &caller).as_deref()).map_err(internal)?;
    files.retain(|f| q.purpose.as_ref().is_none_or(|p| &f.purpose == p));
    Ok(Json(page(files, |f| &f.id, &q, 10_000)))
}

async fn get_file(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<FileObject>, ApiError> {
    Ok(Json(visible_file(&app, &caller, &id)?))
}

async fn file_content(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let file = visible_file(&app, &caller, &id)?;
    let content = tokio::task::spawn_blocking(move || app.batches.content(&file))
        .await
        .map_err(|e| internal(e.to_string()))?
        .map_err(internal)?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], Bytes::from(content)).into_response())
}

async fn delete_file(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    visible_file(&app, &caller, &id)?;
    let in_use = app.batch_runs.lock().unwrap_or_else(|p| p.into_inner()).values().any(|r| r.get().input_file_id == id);
    if in_use {
        return Err(ApiError::Conflict(format!("file {id} is the input of a batch in progress; cancel it first")));
    }
    app.batches.delete_file(&id).map_err(internal)?;
    Ok(Json(json!({"id": id, "object": "file", "deleted": true})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBatch {
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    metadata: Option<serde_json::Map<String, Value>>,
}

async fn create(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<Batch>, ApiError> {
    let new: NewBatch = parse_json(&body)?;
    if Endpoint::from_path(&new.endpoint).is_none() {
        return Err(ApiError::BadRequest(format!("endpoint {:?} is not one of {}", new.endpoint, Endpoint::list())));
    }
    if new.completion_window != WINDOW {
        return Err(ApiError::BadRequest(format!("completion_window must be \"{WINDOW}\"")));
    }
    let file = visible_file(&app, &caller, &new.input_file_id)?;
    if file.purpose != "batch" {
        return Err(ApiError::BadRequest(format!("file {} has purpose {:?}, not \"batch\"", file.id, file.purpose)));
    }
    let created_at = crate::base::clock::unix_ms() / 1000;
    let batch = Batch {
        id: new_id("batch_"),
        object: "batch".into(),
        endpoint: new.endpoint,
        errors: None,
        input_file_id: new.input_file_id,
        completion_window: new.completion_window,
        status: Status::Validating,
        output_file_id: None,
        error_file_id: None,
        created_at,
        in_progress_at: None,
        expires_at: created_at + 24 * 3600,
        finalizing_at: None,
        completed_at: None,
        failed_at: None,
        expired_at: None,
        cancelling_at: None,
        cancelled_at: None,
        request_counts: Counts::default(),
        metadata: new.metadata.map(Value::Object),
    };
    let owner = owner_of(&app, &caller);
    app.batches.insert_batch(&owner, &batch).map_err(internal)?;
    run::spawn(&app, owner, batch.clone());
    Ok(Json(batch))
}

async fn list_batches(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let batches: Vec<Batch> =
        app.batches.batches(scope(&app, &caller).as_deref()).map_err(internal)?.into_iter().map(|(_, b)| b).collect();
    Ok(Json(page(batches, |b| &b.id, &q, 20)))
}

async fn get_batch(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Batch>, ApiError> {
    Ok(Json(visible_batch(&app, &caller, &id)?))
}

/// Stops sending lines; lines in flight are cut, and what finished goes to the output files.
async fn cancel(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Batch>, ApiError> {
    let batch = visible_batch(&app, &caller, &id)?;
    let running = app.batch_runs.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned();
    let Some(run) = running.filter(|_| !batch.status.finished()) else {
        let status = serde_json::to_value(batch.status).expect("serializes");
        return Err(ApiError::Conflict(format!("batch {id} is {status}; only a batch in progress can be cancelled")));
    };
    let batch = run
        .update(&app.batches, |b| {
            if !b.status.finished() && b.status != Status::Cancelling {
                b.status = Status::Cancelling;
                b.cancelling_at = Some(crate::base::clock::unix_ms() / 1000);
            }
        })
        .map_err(internal)?;
    run.cancel.cancel();
    Ok(Json(batch))
}
