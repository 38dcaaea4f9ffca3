//! A service's stdout/stderr: appended to `state_dir/logs/NAME.log` and kept as an in-memory tail.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

const TAIL_LINES: usize = 40;

#[derive(Clone)]
pub struct ServiceLog {
    path: PathBuf,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl ServiceLog {
    pub fn new(path: PathBuf) -> Self {
        ServiceLog { path, tail: Arc::default() }
    }

    pub fn tail(&self, n: usize) -> Vec<String> {
        let tail = self.tail.lock().unwrap();
        tail.iter().skip(tail.len().saturating_sub(n)).cloned().collect()
    }

    /// Marks the start of a new run in the file and drops the old tail.
    pub fn begin_run(&self, what: &str) {
        self.tail.lock().unwrap().clear();
        self.append(&format!("--- warden: {what} ---"), false);
    }

    fn append(&self, line: &str, keep: bool) {
        if keep {
            let mut tail = self.tail.lock().unwrap();
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.to_string());
        }
        // Small appends to a local file; opened per line so rotation by an operator just works.
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&self.path) {
            let _ = writeln!(f, "{line}");
        }
    }

    /// A line from warden itself about this service, kept with the service's own output.
    pub fn note(&self, what: &str) {
        self.append(&format!("--- warden: {what} ---"), true);
    }

    /// Copies lines from a pipe until it closes (when the service's processes are gone).
    pub async fn pump(self, pipe: impl AsyncRead + Unpin) {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            self.append(&line, true);
        }
    }
}
