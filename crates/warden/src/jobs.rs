//! Async jobs (`POST /api/queue/enqueue`): a request run in the background through the same
//! path as a front-door request (admission, wake, proxy), its answer kept for
//! `GET /api/execution/{id}`. Jobs are tasks on warden's tracker and end with it; the latest
//! 10,000 finished ones are kept.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::base::clock::unix_ms;

const KEEP_FINISHED: usize = 10_000;

#[derive(Clone)]
pub enum Outcome {
    Pending,
    /// The upstream's (or warden's) status and JSON answer.
    Done {
        status: u16,
        body: Value,
    },
    Cancelled,
}

struct Job {
    /// Who enqueued it: only that client (or the admin) may see or cancel it.
    client: Option<usize>,
    outcome: Outcome,
    /// Cancels the job's task (a child of warden's shutdown token).
    cancel: CancellationToken,
    /// Unix milliseconds, for people.
    created_ms: u64,
    finished_ms: Option<u64>,
}

/// A job as `/api/execution/{id}` shows it.
pub struct JobView {
    /// The client that enqueued it (None: the anonymous client).
    pub client: Option<usize>,
    pub outcome: Outcome,
    /// Unix milliseconds.
    pub created_ms: u64,
    pub finished_ms: Option<u64>,
}

pub struct Jobs {
    /// Every job, pending or finished, by request id.
    jobs: Mutex<HashMap<String, Job>>,
    /// Finished job ids, oldest first: past `KEEP_FINISHED` the oldest is forgotten.
    finished: Mutex<VecDeque<String>>,
    /// Jobs run as tasks on warden's tracker, so shutdown waits for them (bounded).
    tasks: TaskTracker,
    /// Each job's cancel token is a child of this.
    shutdown: CancellationToken,
}

impl Jobs {
    pub fn new(tasks: TaskTracker, shutdown: CancellationToken) -> Self {
        Jobs { jobs: Mutex::default(), finished: Mutex::default(), tasks, shutdown }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Job>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `work` as job `id`; its result is kept when it ends. False if the id is taken.
    pub fn spawn<F>(self: &Arc<Self>, id: String, client: Option<usize>, work: F) -> bool
    where
        F: std::future::Future<Output = (u16, Value)> + Send + 'static,
    {
        let cancel = self.shutdown.child_token();
        {
            let mut jobs = self.lock();
            if jobs.contains_key(&id) {
                return false;
            }
            let job = Job {
                client,
                outcome: Outcome::Pending,
                cancel: cancel.clone(),
                created_ms: unix_ms(),
                finished_ms: None,
            };
            jobs.insert(id.clone(), job);
        }
        let me = self.clone();
        let span = tracing::info_span!("job", id = %id);
        self.tasks.spawn(
            async move {
                // Cancelling drops `work` wherever it is: a queued request leaves the queue and
                // releases its reservation, a running one settles what it used.
                let outcome = tokio::select! {
                    (status, body) = work => Outcome::Done { status, body },
                    _ = cancel.cancelled() => Outcome::Cancelled,
                };
                me.finish(&id, outcome);
            }
            .instrument(span),
        );
        true
    }

    fn finish(&self, id: &str, outcome: Outcome) {
        if let Some(job) = self.lock().get_mut(id) {
            job.outcome = outcome;
            job.finished_ms = Some(unix_ms());
        }
        let mut finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        finished.push_back(id.to_string());
        if finished.len() > KEEP_FINISHED {
            if let Some(old) = finished.pop_front() {
                self.lock().remove(&old);
            }
        }
    }

    /// What is known of job `id` now.
    pub fn get(&self, id: &str) -> Option<JobView> {
        let jobs = self.lock();
        let job = jobs.get(id)?;
        Some(JobView {
            client: job.client,
            outcome: job.outcome.clone(),
            created_ms: job.created_ms,
            finished_ms: job.finished_ms,
        })
    }

    /// Cancels a pending job; false if it already ended.
    pub fn cancel(&self, id: &str) -> bool {
        let jobs = self.lock();
        match jobs.get(id) {
            Some(job) if matches!(job.outcome, Outcome::Pending) => {
                job.cancel.cancel();
                true
            }
            _ => false,
        }
    }
}
