//! A batch's runner: validates its input file, sends its lines through the pipeline (class
//! `batch`, or `deferred` with `[optimizer] batches_off_peak`) as the client that made it, at
//! most `batch_concurrency` at once, records each result as it ends, and writes the output and
//! error files. One task per batch, on warden's tracker; batches in progress are resumed at
//! start-up (`resume`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use policy::batch::{Line, Status};
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tracing::{warn, Instrument};

use crate::app::App;
use crate::base::caller::Caller;
use crate::base::clock;
use crate::batch::{new_id, Batch, LineState, Run, Store};
use crate::pipeline::Endpoint;
use crate::server::api::{answer_json, call};

/// An answer larger than this is recorded as an error rather than held.
const MAX_ANSWER: usize = 16 << 20;

/// Why a runner stopped sending lines before the last.
#[derive(Clone, Copy, PartialEq)]
enum Stop {
    Cancelled,
    Expired,
    /// warden is stopping: the batch stays in progress and resumes at the next start.
    Shutdown,
}

fn now() -> u64 {
    clock::unix_ms() / 1000
}

/// Runs every batch that had not finished when warden last stopped.
pub fn resume(app: &Arc<App>) {
    match app.batches.batches(None) {
        Ok(all) => all.into_iter().filter(|(_, b)| !b.status.finished()).for_each(|(owner, b)| spawn(app, owner, b)),
        Err(e) => warn!("could not read the batches to resume: {e}"),
    }
}

/// Starts `batch`'s runner.
pub fn spawn(app: &Arc<App>, owner: String, batch: Batch) {
    let id = batch.id.clone();
    let run = Arc::new(Run::new(batch));
    app.batch_runs.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), run.clone());
    let app = app.clone();
    let span = tracing::info_span!("batch", id = %id);
    app.owner_ctx.tasks.clone().spawn(
        async move {
            if let Err(e) = drive(&app, &run, &owner).await {
                warn!("batch failed: {e}");
                let failed = run.update(&app.batches, |b| {
                    b.status = Status::Failed;
                    b.failed_at = Some(now());
                    b.errors = Some(json!({"object": "list", "data": [{"code": "internal_error", "message": e}]}));
                });
                if let Err(e) = failed {
                    warn!("could not record the batch's failure: {e}");
                }
            }
            app.batch_runs.lock().unwrap_or_else(|p| p.into_inner()).remove(&run.get().id);
        }
        .instrument(span),
    );
}

/// The caller a batch's lines run as: the client that made it, as configured now.
fn caller_for(app: &App, owner: &str) -> Option<Caller> {
    let client = match app.config().clients.iter().position(|c| c.name == owner) {
        Some(i) => Some(i),
        None if owner == super::ANONYMOUS => None,
        None => return None,
    };
    Some(Caller { client, admin: false, warden_key: true })
}

/// A line's entry in the error file when it has no answer.
fn error_line(custom_id: &str, code: &str, message: &str) -> Value {
    json!({"id": new_id("batch_req_"), "custom_id": custom_id, "response": null,
           "error": {"code": code, "message": message}})
}

async fn drive(app: &Arc<App>, run: &Run, owner: &str) -> Result<(), String> {
    let store = &app.batches;
    let batch = run.get();
    let endpoint =
        Endpoint::from_path(&batch.endpoint).ok_or_else(|| format!("unknown endpoint {}", batch.endpoint))?;
    let (_, file) =
        store.file(&batch.input_file_id)?.ok_or_else(|| format!("input file {} is gone", batch.input_file_id))?;
    let content = store.content(&file)?;
    let lines = match policy::batch::parse_input(&content, &batch.endpoint) {
        Ok(lines) => lines,
        Err(errors) => {
            run.update(store, |b| {
                b.status = Status::Failed;
                b.failed_at = Some(now());
                b.errors = Some(json!({"object": "list", "data": errors}));
            })?;
            return Ok(());
        }
    };
    drop(content);
    if batch.status == Status::Validating {
        run.update(store, |b| {
            b.status = Status::InProgress;
            b.in_progress_at = Some(now());
            b.request_counts.total = lines.len() as u64;
        })?;
    }
    let mut states = store.line_states(&batch.id)?;
    // Started before warden last stopped, and never finished: it may have reached the model,
    // so it is reported rather than sent again.
    for (&n, state) in states.iter_mut().filter(|(_, s)| **s == LineState::Started) {
        let msg = "warden stopped while this request ran; it is not sent again, so that no request runs twice";
        store.finish_line(&batch.id, n, false, &error_line(&lines[n - 1].custom_id, "interrupted", msg))?;
        run.update(store, |b| b.request_counts.failed += 1)?;
        *state = LineState::Done { ok: false };
    }
    let stop = match (batch.status, caller_for(app, owner)) {
        (Status::Cancelling, _) => Some(Stop::Cancelled),
        (Status::Finalizing, _) => None,
        (_, Some(caller)) => send(app, run, &lines, &states, endpoint, caller).await?,
        (_, None) => {
            let msg = format!("client {owner:?} is no longer configured");
            for (i, line) in lines.iter().enumerate().filter(|(i, _)| !states.contains_key(&(i + 1))) {
                store.finish_line(&batch.id, i + 1, false, &error_line(&line.custom_id, "client_removed", &msg))?;
                run.update(store, |b| b.request_counts.failed += 1)?;
            }
            None
        }
    };
    if stop == Some(Stop::Shutdown) {
        return Ok(());
    }
    finalize(store, run, owner, &lines, stop)
}

/// Sends the lines not yet started, `batch_concurrency` at a time, recording each result.
async fn send(
    app: &Arc<App>,
    run: &Run,
    lines: &[Line],
    states: &HashMap<usize, LineState>,
    endpoint: Endpoint,
    caller: Caller,
) -> Result<Option<Stop>, String> {
    let store = &app.batches;
    let id = run.get().id;
    let expires_at = run.get().expires_at;
    let config = app.config_owned();
    let class = if config.optimizer.batches_off_peak { "deferred" } else { "batch" };
    let mut todo = lines.iter().enumerate().map(|(i, l)| (i + 1, l)).filter(|(n, _)| !states.contains_key(n));
    let mut inflight = JoinSet::new();
    // Task id → (line, custom_id): an aborted line is recorded by it.
    let mut running = HashMap::new();
    let mut stop = None;
    loop {
        while stop.is_none() && inflight.len() < config.optimizer.batch_concurrency {
            if run.cancel.is_cancelled() {
                stop = Some(Stop::Cancelled);
            } else if app.draining.is_cancelled() {
                stop = Some(Stop::Shutdown);
            } else if now() >= expires_at {
                stop = Some(Stop::Expired);
            } else if let Some((n, line)) = todo.next() {
                store.start_line(&id, n)?;
                let (app, body) = (app.clone(), Bytes::from(line.body.clone()));
                let task = inflight.spawn(async move {
                    let request_id = crate::base::http::new_request_id();
                    let resp = call(&app, caller, endpoint, body, Some(class), &request_id).await;
                    let (status, body) = answer_json(resp, MAX_ANSWER).await;
                    (request_id, status, body)
                });
                running.insert(task.id(), (n, line.custom_id.clone()));
                continue;
            }
            break;
        }
        if inflight.is_empty() {
            return Ok(stop);
        }
        let done = tokio::select! {
            done = inflight.join_next_with_id() => done,
            _ = run.cancel.cancelled(), if stop.is_none() => {
                // Lines still queued or running are cut: a cancel does not wait on them.
                stop = Some(Stop::Cancelled);
                inflight.abort_all();
                continue;
            }
        };
        let Some(done) = done else { continue };
        let (task, result) = match done {
            Ok((task, answer)) => (task, Ok(answer)),
            Err(e) => (e.id(), Err(e)),
        };
        let (n, custom_id) = running.remove(&task).expect("every task is recorded");
        let (ok, entry) = match result {
            Ok((request_id, status, body)) => {
                let ok = (200..300).contains(&status);
                let entry = json!({"id": new_id("batch_req_"), "custom_id": custom_id, "error": null,
                    "response": {"status_code": status, "request_id": request_id, "body": body}});
                (ok, entry)
            }
            Err(_) => (
                false,
                error_line(&custom_id, "batch_cancelled", "the batch was cancelled before this request finished"),
            ),
        };
        store.finish_line(&id, n, ok, &entry)?;
        run.update(store, |b| match ok {
            true => b.request_counts.completed += 1,
            false => b.request_counts.failed += 1,
        })?;
    }
}

/// Writes the output and error files and the batch's final status.
fn finalize(store: &Store, run: &Run, owner: &str, lines: &[Line], stop: Option<Stop>) -> Result<(), String> {
    let id = run.get().id;
    if stop.is_none() {
        run.update(store, |b| {
            b.status = Status::Finalizing;
            b.finalizing_at = Some(now());
        })?;
    }
    if stop == Some(Stop::Expired) {
        let started = store.line_states(&id)?;
        let msg = "the batch's completion window ended before this request was sent";
        for (i, line) in lines.iter().enumerate().filter(|(i, _)| !started.contains_key(&(i + 1))) {
            store.finish_line(&id, i + 1, false, &error_line(&line.custom_id, "batch_expired", msg))?;
            run.update(store, |b| b.request_counts.failed += 1)?;
        }
    }
    let results = store.results(&id)?;
    let file = |ok: bool, suffix: &str| -> Result<Option<String>, String> {
        let text: Vec<&str> = results.iter().filter(|(o, _)| *o == ok).map(|(_, r)| r.as_str()).collect();
        if text.is_empty() {
            return Ok(None);
        }
        let content = text.join("\n") + "\n";
        Ok(Some(store.put_file(owner, "batch_output", &format!("{id}_{suffix}.jsonl"), content.as_bytes())?.id))
    };
    let (output, errors) = (file(true, "output")?, file(false, "error")?);
    run.update(store, |b| {
        b.output_file_id = output;
        b.error_file_id = errors;
        let at = Some(now());
        match stop {
            Some(Stop::Cancelled) => (b.status, b.cancelled_at) = (Status::Cancelled, at),
            Some(Stop::Expired) => (b.status, b.expired_at) = (Status::Expired, at),
            _ => (b.status, b.completed_at) = (Status::Completed, at),
        }
    })?;
    store.drop_lines(&id)
}
