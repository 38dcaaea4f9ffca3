//! The Batch API's state: uploaded and produced files (zstd-compressed under
//! `state_dir/files/`, their records in `state_dir/batches.db`), batches (OpenAI's batch
//! object, stored as it is shown), and each batch's lines: started, then finished with their
//! result. Running a batch's lines is the server's (`server/batches`); this only stores.
//!
//! A line is marked started before it is sent, and its result is written when it ends, so
//! after a crash a batch resumes where it stopped and no line runs twice: a line started but
//! never finished is reported as interrupted, not sent again (it may have reached the model).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use policy::batch::Status;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::base::clock;

/// A file as `/v1/files` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileObject {
    pub id: String,
    pub object: String,
    /// Its size as uploaded (uncompressed).
    pub bytes: u64,
    pub created_at: u64,
    pub filename: String,
    /// `batch` (uploaded), `batch_output` (written by a batch).
    pub purpose: String,
    pub status: String,
}

/// `request_counts`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Counts {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

/// A batch as `/v1/batches` shows it (OpenAI's shape), stored as it is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Batch {
    pub id: String,
    pub object: String,
    pub endpoint: String,
    /// `{"object": "list", "data": [...]}` when validation failed.
    pub errors: Option<Value>,
    pub input_file_id: String,
    pub completion_window: String,
    pub status: Status,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub created_at: u64,
    pub in_progress_at: Option<u64>,
    pub expires_at: u64,
    pub finalizing_at: Option<u64>,
    pub completed_at: Option<u64>,
    pub failed_at: Option<u64>,
    pub expired_at: Option<u64>,
    pub cancelling_at: Option<u64>,
    pub cancelled_at: Option<u64>,
    pub request_counts: Counts,
    pub metadata: Option<Value>,
}

/// A batch being run. Its runner (counts, status) and a cancel (status) both change the
/// object, under this lock, and save it, so neither overwrites the other.
pub struct Run {
    pub doc: Mutex<Batch>,
    /// Stops the runner sending lines; those in flight are cut.
    pub cancel: tokio_util::sync::CancellationToken,
}

impl Run {
    pub fn new(batch: Batch) -> Run {
        Run { doc: Mutex::new(batch), cancel: Default::default() }
    }

    /// Changes the batch, saves it, and returns it as saved.
    pub fn update(&self, store: &Store, change: impl FnOnce(&mut Batch)) -> Result<Batch, String> {
        let mut doc = self.doc.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut doc);
        store.save_batch(&doc)?;
        Ok(doc.clone())
    }

    pub fn get(&self) -> Batch {
        self.doc.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Where a line stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineState {
    Started,
    /// Finished; `ok` when its answer was a success (it goes to the output file, else to the
    /// error file).
    Done {
        ok: bool,
    },
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, created_at INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS lines (
    batch_id TEXT NOT NULL, line INTEGER NOT NULL, ok INTEGER, result TEXT,
    PRIMARY KEY (batch_id, line));
";

/// Fast, and several times smaller for JSONL.
const ZSTD_LEVEL: i32 = 3;

pub struct Store {
    /// One connection: every statement is short, and batches are few.
    db: Mutex<Connection>,
    /// `state_dir/files`: one `{id}.zst` per file.
    files_dir: PathBuf,
}

/// A new id with OpenAI's prefix (`file-`, `batch_`, `batch_req_`), unique across restarts.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", crate::base::http::new_request_id().replace('-', ""))
}

impl Store {
    pub fn open(state_dir: &Path) -> Result<Store, String> {
        let files_dir = state_dir.join("files");
        std::fs::create_dir_all(&files_dir).map_err(|e| format!("cannot create {}: {e}", files_dir.display()))?;
        let path = state_dir.join("batches.db");
        let conn = Connection::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        conn.execute_batch("PRAGMA journal_mode = WAL;")
            .and_then(|_| conn.execute_batch(SCHEMA))
            .map_err(|e| format!("cannot set up {}: {e}", path.display()))?;
        Ok(Store { db: Mutex::new(conn), files_dir })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, id: &str) -> PathBuf {
        // Ids are warden's own (checked by `file` before any path is made from one).
        self.files_dir.join(format!("{id}.zst"))
    }

    /// Stores `content` as a new file owned by `owner` ("" for the anonymous client).
    pub fn put_file(&self, owner: &str, purpose: &str, filename: &str, content: &[u8]) -> Result<FileObject, String> {
        let file = FileObject {
            id: new_id("file-"),
            object: "file".into(),
            bytes: content.len() as u64,
            created_at: clock::unix_ms() / 1000,
            filename: filename.into(),
            purpose: purpose.into(),
            status: "processed".into(),
        };
        let packed = zstd::bulk::compress(content, ZSTD_LEVEL).map_err(|e| format!("compressing the file: {e}"))?;
        let path = self.path(&file.id);
        std::fs::write(&path, packed).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let doc = serde_json::to_string(&file).expect("serializes");
        self.db()
            .execute("INSERT INTO files (id, owner, doc) VALUES (?1, ?2, ?3)", params![file.id, owner, doc])
            .map_err(|e| format!("recording the file: {e}"))?;
        Ok(file)
    }

    /// A file and its owner.
    pub fn file(&self, id: &str) -> Result<Option<(String, FileObject)>, String> {
        let row: Option<(String, String)> = self
            .db()
            .query_row("SELECT owner, doc FROM files WHERE id = ?1", [id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(|e| e.to_string())?;
        Ok(row.map(|(owner, doc)| (owner, serde_json::from_str(&doc).expect("stored by put_file"))))
    }

    /// Files of `owner` (every owner's for None), oldest first.
    pub fn files(&self, owner: Option<&str>) -> Result<Vec<FileObject>, String> {
        let db = self.db();
        let mut q = db
            .prepare("SELECT doc FROM files WHERE ?1 IS NULL OR owner = ?1 ORDER BY rowid")
            .map_err(|e| e.to_string())?;
        let docs = q.query_map([owner], |r| r.get::<_, String>(0)).map_err(|e| e.to_string())?;
        docs.map(|d| Ok(serde_json::from_str(&d.map_err(|e| e.to_string())?).expect("stored by put_file"))).collect()
    }

    /// A file's content, as uploaded (`bytes` long: a file is never unpacked past its size).
    pub fn content(&self, file: &FileObject) -> Result<Vec<u8>, String> {
        let path = self.path(&file.id);
        let packed = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        zstd::bulk::decompress(&packed, file.bytes as usize).map_err(|e| format!("unpacking {}: {e}", path.display()))
    }

    pub fn delete_file(&self, id: &str) -> Result<(), String> {
        self.db().execute("DELETE FROM files WHERE id = ?1", [id]).map_err(|e| e.to_string())?;
        match std::fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("cannot delete file {id}: {e}")),
            _ => Ok(()),
        }
    }

    pub fn insert_batch(&self, owner: &str, batch: &Batch) -> Result<(), String> {
        let doc = serde_json::to_string(batch).expect("serializes");
        self.db()
            .execute(
                "INSERT INTO batches (id, owner, created_at, doc) VALUES (?1, ?2, ?3, ?4)",
                params![batch.id, owner, batch.created_at, doc],
            )
            .map(|_| ())
            .map_err(|e| format!("recording the batch: {e}"))
    }

    pub fn save_batch(&self, batch: &Batch) -> Result<(), String> {
        let doc = serde_json::to_string(batch).expect("serializes");
        self.db()
            .execute("UPDATE batches SET doc = ?2 WHERE id = ?1", params![batch.id, doc])
            .map(|_| ())
            .map_err(|e| format!("saving batch {}: {e}", batch.id))
    }

    /// A batch and its owner.
    pub fn batch(&self, id: &str) -> Result<Option<(String, Batch)>, String> {
        let row: Option<(String, String)> = self
            .db()
            .query_row("SELECT owner, doc FROM batches WHERE id = ?1", [id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(|e| e.to_string())?;
        Ok(row.map(|(owner, doc)| (owner, serde_json::from_str(&doc).expect("stored by save_batch"))))
    }

    /// Batches of `owner` (every owner's for None), newest first, with their owners.
    pub fn batches(&self, owner: Option<&str>) -> Result<Vec<(String, Batch)>, String> {
        let db = self.db();
        let mut q = db
            .prepare(
                "SELECT owner, doc FROM batches WHERE ?1 IS NULL OR owner = ?1 ORDER BY created_at DESC, rowid DESC",
            )
            .map_err(|e| e.to_string())?;
        let rows = q
            .query_map([owner], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| e.to_string())?;
        rows.map(|r| {
            let (owner, doc) = r.map_err(|e| e.to_string())?;
            Ok((owner, serde_json::from_str(&doc).expect("stored by save_batch")))
        })
        .collect()
    }

    /// Every line of `batch` that was started, by line number.
    pub fn line_states(&self, batch: &str) -> Result<std::collections::HashMap<usize, LineState>, String> {
        let db = self.db();
        let mut q = db.prepare("SELECT line, ok FROM lines WHERE batch_id = ?1").map_err(|e| e.to_string())?;
        let rows = q
            .query_map([batch], |r| {
                let ok: Option<bool> = r.get(1)?;
                Ok((r.get::<_, i64>(0)? as usize, ok.map_or(LineState::Started, |ok| LineState::Done { ok })))
            })
            .map_err(|e| e.to_string())?;
        rows.map(|r| r.map_err(|e| e.to_string())).collect()
    }

    /// Marks a line started: from here on it is never sent again.
    pub fn start_line(&self, batch: &str, line: usize) -> Result<(), String> {
        self.db()
            .execute("INSERT INTO lines (batch_id, line) VALUES (?1, ?2)", params![batch, line as i64])
            .map(|_| ())
            .map_err(|e| format!("marking line {line} of {batch} started: {e}"))
    }

    /// A line's result: the JSON line of the output (ok) or error file.
    pub fn finish_line(&self, batch: &str, line: usize, ok: bool, result: &Value) -> Result<(), String> {
        self.db()
            .execute(
                "INSERT INTO lines (batch_id, line, ok, result) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (batch_id, line) DO UPDATE SET ok = ?3, result = ?4",
                params![batch, line as i64, ok, result.to_string()],
            )
            .map(|_| ())
            .map_err(|e| format!("recording line {line} of {batch}: {e}"))
    }

    /// The finished lines' results in line order: (ok, JSON line).
    pub fn results(&self, batch: &str) -> Result<Vec<(bool, String)>, String> {
        let db = self.db();
        let mut q = db
            .prepare("SELECT ok, result FROM lines WHERE batch_id = ?1 AND ok IS NOT NULL ORDER BY line")
            .map_err(|e| e.to_string())?;
        let rows = q.query_map([batch], |r| Ok((r.get(0)?, r.get(1)?))).map_err(|e| e.to_string())?;
        rows.map(|r| r.map_err(|e| e.to_string())).collect()
    }

    /// A finished batch's lines are in its files now.
    pub fn drop_lines(&self, batch: &str) -> Result<(), String> {
        self.db().execute("DELETE FROM lines WHERE batch_id = ?1", [batch]).map(|_| ()).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip_compressed_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let text = "{\"a\": 1}\n".repeat(1000);
        let id = {
            let store = Store::open(dir.path()).unwrap();
            let f = store.put_file("team", "batch", "in.jsonl", text.as_bytes()).unwrap();
            assert_eq!(f.bytes, text.len() as u64);
            let on_disk = std::fs::metadata(dir.path().join("files").join(format!("{}.zst", f.id))).unwrap().len();
            assert!(on_disk < f.bytes / 10, "stored compressed: {on_disk} bytes for {}", f.bytes);
            f.id
        };
        let store = Store::open(dir.path()).unwrap();
        let (owner, f) = store.file(&id).unwrap().unwrap();
        assert_eq!(owner, "team");
        assert_eq!(store.content(&f).unwrap(), text.as_bytes());
        assert_eq!(store.files(Some("other")).unwrap(), vec![]);
        store.delete_file(&id).unwrap();
        assert!(store.file(&id).unwrap().is_none());
    }

    #[test]
    fn a_line_is_started_then_finished_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.start_line("b", 2).unwrap();
        assert!(store.start_line("b", 2).is_err(), "a started line cannot start again");
        store.start_line("b", 1).unwrap();
        store.finish_line("b", 1, true, &serde_json::json!({"n": 1})).unwrap();
        let states = store.line_states("b").unwrap();
        assert_eq!(states[&1], LineState::Done { ok: true });
        assert_eq!(states[&2], LineState::Started);
        assert_eq!(store.results("b").unwrap(), vec![(true, "{\"n\":1}".to_string())]);
    }
}
