//! The only code that runs SQL. Every finished request's usage and cost, and every model
//! request's timing (for `/admin/performance`), go to SQLite under state_dir (WAL,
//! synchronous = FULL: a committed record survives a crash). One writer thread
//! commits what arrives within a few milliseconds in one transaction, so many requests share
//! one fsync; readers use their own connection and never block it.

use std::path::Path;
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

/// One finished request.
#[derive(Debug, Clone, Serialize)]
pub struct UsageRecord {
    pub request_id: String,
    pub client: String,
    pub model: Option<String>,
    pub service: String,
    pub class: String,
    /// The upstream's status; 0 = no answer.
    pub status: u16,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_micros: i64,
    /// No usage came back: the tokens and cost are the estimate charged.
    pub estimated: bool,
    pub queued_ms: u64,
    pub duration_ms: u64,
    /// Unix milliseconds when it finished.
    pub finished_at_ms: u64,
    /// `year * 12 + month - 1`, UTC.
    pub month: u32,
    /// Answered from the response cache (it cost nothing).
    pub cached: bool,
    /// What the optimizer saved on it: a cache hit saves what its answer costs at the
    /// model's price; a downgrade what it would have cost on the model asked for, less its cost.
    pub saved_micros: i64,
    /// The optimizer served it one rung down from this model.
    pub downgraded_from: Option<String>,
    /// A hash of its path and body: identical requests share it (what caching could serve).
    pub body_hash: Option<i64>,
}

/// One finished model request's timing.
#[derive(Debug, Clone, PartialEq)]
pub struct PerfRecord {
    pub model: String,
    pub task: Option<String>,
    pub ok: bool,
    pub total_ms: u32,
    pub first_byte_ms: Option<u32>,
    pub tokens: Option<u32>,
    /// Unix milliseconds when it finished.
    pub finished_at_ms: u64,
    /// The requests this row stands for (see `performance::STORED_PER_SEC`).
    pub weight: u32,
}

enum Msg {
    Record(Box<UsageRecord>),
    Perf(Box<PerfRecord>),
    Flush(mpsc::SyncSender<()>),
}

/// Timings older than this are deleted when the database is opened.
const PERF_KEEP_MS: u64 = 30 * 24 * 3600 * 1000;

pub struct Store {
    /// To the writer thread (records, flush requests); None once closed.
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    /// The one thread that writes (grouped commits); joined on close.
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Reads for the API on a connection of their own (WAL lets them run beside the writer).
    reader: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS usage (
    request_id TEXT NOT NULL,
    client TEXT NOT NULL,
    model TEXT,
    service TEXT NOT NULL,
    class TEXT NOT NULL,
    status INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_micros INTEGER NOT NULL,
    estimated INTEGER NOT NULL,
    queued_ms INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    finished_at_ms INTEGER NOT NULL,
    month INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_client_month ON usage (client, month);
CREATE INDEX IF NOT EXISTS usage_request ON usage (request_id);
CREATE TABLE IF NOT EXISTS performance (
    finished_at_ms INTEGER NOT NULL,
    model TEXT NOT NULL,
    task TEXT,
    ok INTEGER NOT NULL,
    total_ms INTEGER NOT NULL,
    first_byte_ms INTEGER,
    tokens INTEGER,
    weight INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS performance_finished ON performance (finished_at_ms);
";

fn connect(path: &Path) -> Result<Connection, String> {
    let conn = Connection::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(|e| e.to_string())?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
        .map_err(|e| format!("cannot set up {}: {e}", path.display()))?;
    Ok(conn)
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, String> {
        let conn = connect(path)?;
        conn.execute_batch(SCHEMA).map_err(|e| format!("cannot create tables in {}: {e}", path.display()))?;
        // Columns added after the first release: a database made before them gains them.
        for column in [
            "cached INTEGER NOT NULL DEFAULT 0",
            "saved_micros INTEGER NOT NULL DEFAULT 0",
            "downgraded_from TEXT",
            "body_hash INTEGER",
        ] {
            match conn.execute_batch(&format!("ALTER TABLE usage ADD COLUMN {column}")) {
                Err(e) if !e.to_string().contains("duplicate column") => {
                    return Err(format!("cannot add a column to {}: {e}", path.display()))
                }
                _ => {}
            }
        }
        // Rows written before timings were thinned stand for one request each.
        match conn.execute_batch("ALTER TABLE performance ADD COLUMN weight INTEGER NOT NULL DEFAULT 1") {
            Err(e) if !e.to_string().contains("duplicate column") => {
                return Err(format!("cannot add a column to {}: {e}", path.display()))
            }
            _ => {}
        }
        let old = crate::base::clock::unix_ms().saturating_sub(PERF_KEEP_MS);
        conn.execute("DELETE FROM performance WHERE finished_at_ms < ?1", params![old])
            .map_err(|e| format!("cannot prune {}: {e}", path.display()))?;
        let reader = connect(path)?;
        let (tx, rx) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("usage writer".into())
            .spawn(move || write_loop(conn, rx))
            .map_err(|e| e.to_string())?;
        Ok(Store { tx: Mutex::new(Some(tx)), writer: Mutex::new(Some(writer)), reader: Mutex::new(reader) })
    }

    pub fn record(&self, rec: UsageRecord) {
        self.send(Msg::Record(Box::new(rec)));
    }

    pub fn record_perf(&self, rec: PerfRecord) {
        self.send(Msg::Perf(Box::new(rec)));
    }

    fn send(&self, msg: Msg) {
        if let Some(tx) = self.tx.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = tx.send(msg);
        }
    }

    /// Model timings that finished at or after `since_ms` (Unix ms), oldest first.
    pub fn perf_since(&self, since_ms: u64) -> Result<Vec<PerfRecord>, String> {
        self.read(|c| {
            let mut q = c.prepare_cached(
                "SELECT model, task, ok, total_ms, first_byte_ms, tokens, finished_at_ms, weight FROM performance
                 WHERE finished_at_ms >= ?1 ORDER BY finished_at_ms",
            )?;
            let rows = q.query_map(params![since_ms], |r| {
                Ok(PerfRecord {
                    model: r.get(0)?,
                    task: r.get(1)?,
                    ok: r.get(2)?,
                    total_ms: r.get(3)?,
                    first_byte_ms: r.get(4)?,
                    tokens: r.get(5)?,
                    finished_at_ms: r.get(6)?,
                    weight: r.get(7)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Waits (bounded) until everything recorded so far is committed.
    pub fn flush(&self) -> bool {
        let (ack, done) = mpsc::sync_channel(1);
        let sent = self
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|tx| tx.send(Msg::Flush(ack)).is_ok());
        sent && done.recv_timeout(Duration::from_secs(10)).is_ok()
    }

    /// Commits what is pending and stops the writer.
    pub fn close(&self) {
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(writer) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = writer.join();
        }
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, String> {
        f(&self.reader.lock().unwrap_or_else(|p| p.into_inner())).map_err(|e| format!("usage database: {e}"))
    }

    /// Each client's committed spend in `month`.
    pub fn spend_by_client(&self, month: u32) -> Result<Vec<(String, i64)>, String> {
        self.read(|c| {
            let mut q = c.prepare("SELECT client, SUM(cost_micros) FROM usage WHERE month = ?1 GROUP BY client")?;
            let rows = q.query_map([month], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    /// A client's totals in `month`, by model.
    pub fn totals(&self, client: &str, month: u32) -> Result<Vec<ModelTotals>, String> {
        self.read(|c| {
            let mut q = c.prepare(
                "SELECT COALESCE(model, ''), COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_micros)
                 FROM usage WHERE client = ?1 AND month = ?2 GROUP BY model ORDER BY model",
            )?;
            let rows = q.query_map(params![client, month], |r| {
                Ok(ModelTotals {
                    model: r.get(0)?,
                    requests: r.get(1)?,
                    prompt_tokens: r.get(2)?,
                    completion_tokens: r.get(3)?,
                    cost_micros: r.get(4)?,
                })
            })?;
            rows.collect()
        })
    }

    /// What the optimizer saved a client in `month`, by strategy, from its usage rows.
    pub fn savings(&self, client: &str, month: u32) -> Result<Savings, String> {
        self.read(|c| {
            c.query_row(
                "SELECT
                    COALESCE(SUM(cached), 0),
                    COALESCE(SUM(CASE WHEN cached = 1 THEN prompt_tokens ELSE 0 END), 0),
                    COALESCE(SUM(CASE WHEN cached = 1 THEN completion_tokens ELSE 0 END), 0),
                    COALESCE(SUM(CASE WHEN cached = 1 THEN saved_micros ELSE 0 END), 0),
                    COALESCE(SUM(downgraded_from IS NOT NULL), 0),
                    COALESCE(SUM(CASE WHEN downgraded_from IS NOT NULL THEN saved_micros ELSE 0 END), 0),
                    COALESCE(SUM(class = 'deferred'), 0),
                    COALESCE(SUM(saved_micros), 0)
                 FROM usage WHERE client = ?1 AND month = ?2",
                params![client, month],
                |r| {
                    Ok(Savings {
                        cache_answers: r.get(0)?,
                        cache_prompt_tokens: r.get(1)?,
                        cache_completion_tokens: r.get(2)?,
                        cache_saved_micros: r.get(3)?,
                        downgrades: r.get(4)?,
                        downgrade_saved_micros: r.get(5)?,
                        off_peak_requests: r.get(6)?,
                        total_saved_micros: r.get(7)?,
                    })
                },
            )
        })
    }

    /// A client's history in `month` as the optimizer's recommendations read it: repeated
    /// requests (identical path and body), and its batch-class work.
    pub fn history(&self, client: &str, month: u32) -> Result<History, String> {
        self.read(|c| {
            let (requests, repeats, repeat_cost): (u64, u64, i64) = c.query_row(
                "SELECT COALESCE(SUM(n), 0), COALESCE(SUM(n - 1), 0), COALESCE(SUM(cost - first), 0) FROM (
                     SELECT COUNT(*) AS n, SUM(cost_micros) AS cost, MIN(cost_micros) AS first
                     FROM usage WHERE client = ?1 AND month = ?2 AND body_hash IS NOT NULL AND cached = 0
                     GROUP BY body_hash)",
                params![client, month],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let (batch, batch_cost): (u64, i64) = c.query_row(
                "SELECT COUNT(*), COALESCE(SUM(cost_micros), 0) FROM usage
                 WHERE client = ?1 AND month = ?2 AND class = 'batch'",
                params![client, month],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(History { requests, repeats, repeat_cost_micros: repeat_cost, batch, batch_cost_micros: batch_cost })
        })
    }

    /// A client's latest requests, newest first.
    pub fn recent(&self, client: &str, limit: u32) -> Result<Vec<UsageRecord>, String> {
        self.read(|c| {
            let mut q = c.prepare(&format!("{SELECT} WHERE client = ?1 ORDER BY rowid DESC LIMIT ?2"))?;
            let rows = q.query_map(params![client, limit], row)?;
            rows.collect()
        })
    }

    pub fn request(&self, request_id: &str) -> Result<Option<UsageRecord>, String> {
        self.read(|c| {
            c.query_row(&format!("{SELECT} WHERE request_id = ?1 ORDER BY rowid DESC"), [request_id], row).optional()
        })
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

/// What recommendations are made from (see `Store::history`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct History {
    /// Model requests that were sent upstream (not cache hits).
    pub requests: u64,
    /// Of those, repeats of an earlier identical request.
    pub repeats: u64,
    /// What the repeats cost.
    pub repeat_cost_micros: i64,
    pub batch: u64,
    pub batch_cost_micros: i64,
}

/// A client's savings in a month, by strategy (see `Store::savings`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Savings {
    pub cache_answers: u64,
    pub cache_prompt_tokens: u64,
    pub cache_completion_tokens: u64,
    pub cache_saved_micros: i64,
    pub downgrades: u64,
    pub downgrade_saved_micros: i64,
    pub off_peak_requests: u64,
    /// Every row's saving: what the strategies above add up to.
    pub total_saved_micros: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelTotals {
    pub model: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_micros: i64,
}

const SELECT: &str = "SELECT request_id, client, model, service, class, status, prompt_tokens, completion_tokens,
    cost_micros, estimated, queued_ms, duration_ms, finished_at_ms, month, cached, saved_micros, downgraded_from, body_hash FROM usage";

fn row(r: &rusqlite::Row) -> rusqlite::Result<UsageRecord> {
    Ok(UsageRecord {
        request_id: r.get(0)?,
        client: r.get(1)?,
        model: r.get(2)?,
        service: r.get(3)?,
        class: r.get(4)?,
        status: r.get(5)?,
        prompt_tokens: r.get(6)?,
        completion_tokens: r.get(7)?,
        cost_micros: r.get(8)?,
        estimated: r.get(9)?,
        queued_ms: r.get(10)?,
        duration_ms: r.get(11)?,
        finished_at_ms: r.get(12)?,
        month: r.get(13)?,
        cached: r.get(14)?,
        saved_micros: r.get(15)?,
        downgraded_from: r.get(16)?,
        body_hash: r.get(17)?,
    })
}

/// How long the writer lingers after a record for more to share its commit: under load a
/// commit (an fsync) per few records took a fifth of warden's CPU on two cores.
const LINGER: Duration = Duration::from_millis(5);
const MAX_BATCH: usize = 2000;

/// The first message, then whatever arrives within `LINGER` (a flush ends the wait at once).
fn gather(first: Msg, rx: &mpsc::Receiver<Msg>) -> Vec<Msg> {
    let deadline = std::time::Instant::now() + LINGER;
    let mut flushing = matches!(first, Msg::Flush(_));
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        let next = if flushing {
            rx.try_recv().ok()
        } else {
            rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())).ok()
        };
        let Some(msg) = next else { break };
        flushing |= matches!(msg, Msg::Flush(_));
        batch.push(msg);
    }
    batch
}

fn write_loop(mut conn: Connection, rx: mpsc::Receiver<Msg>) {
    while let Ok(first) = rx.recv() {
        let batch = gather(first, &rx);
        let mut acks = Vec::new();
        let result = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO usage (request_id, client, model, service, class, status, prompt_tokens,
                     completion_tokens, cost_micros, estimated, queued_ms, duration_ms, finished_at_ms, month,
                     cached, saved_micros, downgraded_from, body_hash)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
                )?;
                let mut perf = tx.prepare_cached("INSERT INTO performance VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")?;
                for msg in batch {
                    match msg {
                        Msg::Record(r) => {
                            insert.execute(params![
                                r.request_id,
                                r.client,
                                r.model,
                                r.service,
                                r.class,
                                r.status,
                                r.prompt_tokens,
                                r.completion_tokens,
                                r.cost_micros,
                                r.estimated,
                                r.queued_ms,
                                r.duration_ms,
                                r.finished_at_ms,
                                r.month,
                                r.cached,
                                r.saved_micros,
                                r.downgraded_from,
                                r.body_hash
                            ])?;
                        }
                        Msg::Perf(p) => {
                            perf.execute(params![
                                p.finished_at_ms,
                                p.model,
                                p.task,
                                p.ok,
                                p.total_ms,
                                p.first_byte_ms,
                                p.tokens,
                                p.weight
                            ])?;
                        }
                        Msg::Flush(ack) => acks.push(ack),
                    }
                }
            }
            tx.commit()
        })();
        if let Err(e) = result {
            tracing::error!("Could not write usage and performance records: {e}");
        }
        for ack in acks {
            let _ = ack.try_send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, client: &str, cost: i64, month: u32) -> UsageRecord {
        UsageRecord {
            request_id: id.into(),
            client: client.into(),
            model: Some("m".into()),
            service: "s".into(),
            class: "normal".into(),
            status: 200,
            prompt_tokens: 3,
            completion_tokens: 4,
            cost_micros: cost,
            estimated: false,
            queued_ms: 0,
            duration_ms: 1,
            finished_at_ms: 1,
            month,
            cached: false,
            saved_micros: 0,
            downgraded_from: None,
            body_hash: None,
        }
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warden.db");
        {
            let store = Store::open(&path).unwrap();
            store.record(rec("a", "acme", 10, 5));
            store.record(rec("b", "acme", 20, 5));
            store.record(rec("c", "acme", 40, 4));
            store.record(rec("d", "zeta", 1, 5));
            store.close();
        }
        let store = Store::open(&path).unwrap();
        let mut spend = store.spend_by_client(5).unwrap();
        spend.sort();
        assert_eq!(spend, vec![("acme".into(), 30), ("zeta".into(), 1)]);
        assert_eq!(store.request("c").unwrap().unwrap().cost_micros, 40);
        assert_eq!(
            store.recent("acme", 2).unwrap().iter().map(|r| r.request_id.as_str()).collect::<Vec<_>>(),
            ["c", "b"]
        );
        let t = store.totals("acme", 5).unwrap();
        assert_eq!((t[0].requests, t[0].prompt_tokens, t[0].cost_micros), (2, 6, 30));
        assert!(store.request("nope").unwrap().is_none());
        store.record(rec("e", "acme", 5, 5));
        assert!(store.flush());
        assert_eq!(store.request("e").unwrap().unwrap().cost_micros, 5);
    }
}
