//! The response cache's store: answers by key, in SQLite (`state_dir/cache.db`, kept across
//! restarts, or in memory), bounded in bytes (the least recently used go first) and in age
//! (`ttl`). What may be cached and the key's text are pure decisions (`policy::cache`); the
//! pipeline's `cache` stage looks up and fills.
//!
//! Answers are stored zstd-compressed (answers are text: a few times smaller), so `max_size`
//! bounds what is on disk.
//!
//! A cache may lose its latest entries in a crash (`synchronous = NORMAL`: no fsync per
//! entry), which costs a miss, never a wrong answer.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use sha2::Digest;

use crate::base::clock;
use crate::config::CacheConfig;

/// A stored answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `application/json`, or `text/event-stream` for a stream (replayed event by event).
    pub content_type: String,
    pub body: Vec<u8>,
    /// The tokens the answer reported when it was made (what a hit saves).
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

pub type Key = [u8; 32];

/// Answers larger than this are not cached (and a stored one never unpacks past it): an
/// answer is held in memory while it streams through to be stored, so this bounds what each
/// request in flight may hold.
const MAX_ANSWER: usize = 16 << 20;
/// Fast, and still several times smaller for text.
const ZSTD_LEVEL: i32 = 3;

/// The key of a request's canonical text (`policy::cache::key_text`).
pub fn key(text: &str) -> Key {
    sha2::Sha256::digest(text.as_bytes()).into()
}

pub struct Cache {
    /// One connection: lookups and writes are short, and a hit must not wait for a pool.
    db: Mutex<Db>,
    max_size: u64,
    ttl: Duration,
}

struct Db {
    conn: Connection,
    /// Bytes of answers stored now.
    size: u64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS entries (
    key BLOB PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    used_ms INTEGER NOT NULL,
    size INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_used ON entries (used_ms);
CREATE TABLE IF NOT EXISTS vectors (
    key BLOB PRIMARY KEY,
    context BLOB NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS vectors_context ON vectors (context);
";

impl Cache {
    /// The cache `config` asks for (None when it is off).
    pub fn open(config: &CacheConfig, state_dir: &Path) -> Result<Option<Cache>, String> {
        if !config.enabled {
            return Ok(None);
        }
        let path = state_dir.join("cache.db");
        let conn = match config.on_disk {
            true => Connection::open(&path),
            false => Connection::open_in_memory(),
        }
        .map_err(|e| format!("cannot open the cache {}: {e}", path.display()))?;
        let setup = |e: rusqlite::Error| format!("cannot set up the cache {}: {e}", path.display());
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;").map_err(setup)?;
        conn.execute_batch(SCHEMA).map_err(setup)?;
        let size: i64 =
            conn.query_row("SELECT COALESCE(SUM(size), 0) FROM entries", [], |r| r.get(0)).map_err(setup)?;
        let cache =
            Cache { db: Mutex::new(Db { conn, size: size as u64 }), max_size: config.max_size, ttl: config.ttl };
        cache.evict(&mut cache.lock());
        Ok(Some(cache))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The answer stored under `key`, if it is younger than the ttl (an older one is dropped).
    pub fn get(&self, key: &Key) -> Option<Entry> {
        let now = clock::unix_ms();
        let mut db = self.lock();
        let found = db
            .conn
            .query_row(
                "SELECT created_ms, size, content_type, prompt_tokens, completion_tokens, body FROM entries WHERE key = ?1",
                [&key[..]],
                |r| {
                    let entry = Entry {
                        content_type: r.get(2)?,
                        prompt_tokens: r.get(3)?,
                        completion_tokens: r.get(4)?,
                        body: Vec::new(),
                    };
                    Ok((r.get::<_, u64>(0)?, r.get::<_, u64>(1)?, entry, r.get::<_, Vec<u8>>(5)?))
                },
            )
            .optional()
            .unwrap_or_else(|e| {
                tracing::warn!("Cache lookup failed: {e}");
                None
            });
        let (created, size, mut entry, packed) = found?;
        if now.saturating_sub(created) >= self.ttl.as_millis() as u64 {
            if db.conn.execute("DELETE FROM entries WHERE key = ?1", [&key[..]]).is_ok() {
                db.size = db.size.saturating_sub(size);
                let _ = db.conn.execute("DELETE FROM vectors WHERE key = ?1", [&key[..]]);
            }
            return None;
        }
        let _ = db.conn.execute("UPDATE entries SET used_ms = ?2 WHERE key = ?1", params![&key[..], now]);
        drop(db);
        entry.body = zstd::bulk::decompress(&packed, MAX_ANSWER)
            .map_err(|e| tracing::warn!("Cache entry unreadable, dropped: {e}"))
            .ok()?;
        Some(entry)
    }

    /// Whether a live answer is stored under `key` (changes nothing).
    pub fn contains(&self, key: &Key) -> bool {
        let oldest = clock::unix_ms().saturating_sub(self.ttl.as_millis() as u64);
        let db = self.lock();
        let found = db.conn.query_row(
            "SELECT 1 FROM entries WHERE key = ?1 AND created_ms > ?2",
            params![&key[..], oldest],
            |_| Ok(()),
        );
        found.is_ok()
    }

    /// Stores an answer (one larger than the whole cache is not kept), then drops the least
    /// recently used until the cache fits its bound.
    pub fn put(&self, key: &Key, entry: &Entry) {
        if entry.body.len() > MAX_ANSWER {
            return;
        }
        let Ok(packed) = zstd::bulk::compress(&entry.body, ZSTD_LEVEL) else { return };
        let size = packed.len() as u64;
        if size > self.max_size {
            return;
        }
        let now = clock::unix_ms();
        let mut db = self.lock();
        let old: Option<u64> = db
            .conn
            .query_row("SELECT size FROM entries WHERE key = ?1", [&key[..]], |r| r.get(0))
            .optional()
            .ok()
            .flatten();
        let stored = db.conn.execute(
            "INSERT OR REPLACE INTO entries VALUES (?1, ?2, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![&key[..], now, size, entry.content_type, entry.prompt_tokens, entry.completion_tokens, packed],
        );
        match stored {
            Ok(_) => db.size = db.size.saturating_sub(old.unwrap_or(0)) + size,
            Err(e) => tracing::warn!("Cache store failed: {e}"),
        }
        self.evict(&mut db);
    }

    fn evict(&self, db: &mut Db) {
        while db.size > self.max_size {
            let oldest: Option<(Vec<u8>, u64)> = db
                .conn
                .query_row("SELECT key, size FROM entries ORDER BY used_ms LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .ok()
                .flatten();
            let Some((key, size)) = oldest else { break };
            if db.conn.execute("DELETE FROM entries WHERE key = ?1", [&key]).is_err() {
                break;
            }
            let _ = db.conn.execute("DELETE FROM vectors WHERE key = ?1", [&key]);
            db.size = db.size.saturating_sub(size);
        }
    }

    /// Files the embedding of the answer stored under `key` (semantic cache), with the key of
    /// its context (everything but the last user message).
    pub fn put_vector(&self, key: &Key, context: &Key, vector: &[f32]) {
        let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
        let db = self.lock();
        if let Err(e) = db
            .conn
            .execute("INSERT OR REPLACE INTO vectors VALUES (?1, ?2, ?3)", params![&key[..], &context[..], bytes])
        {
            tracing::warn!("Cache vector store failed: {e}");
        }
    }

    /// The live answer in `context` whose embedding is nearest `vector`, if its cosine
    /// similarity is at least `threshold`: its key and the similarity.
    pub fn nearest(&self, context: &Key, vector: &[f32], threshold: f64) -> Option<(Key, f64)> {
        let oldest = clock::unix_ms().saturating_sub(self.ttl.as_millis() as u64);
        let db = self.lock();
        let mut q = db
            .conn
            .prepare_cached(
                "SELECT v.key, v.vector FROM vectors v JOIN entries e ON e.key = v.key
                 WHERE v.context = ?1 AND e.created_ms > ?2",
            )
            .ok()?;
        let rows =
            q.query_map(params![&context[..], oldest], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)));
        let mut best: Option<(Key, f64)> = None;
        for (key, bytes) in rows.ok()?.flatten() {
            let stored: Vec<f32> =
                bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
            let similarity = policy::cache::cosine(vector, &stored);
            if similarity >= threshold && best.as_ref().is_none_or(|(_, b)| similarity > *b) {
                best = Some((key.try_into().ok()?, similarity));
            }
        }
        best
    }

    /// The largest answer kept.
    pub fn max_entry(&self) -> usize {
        MAX_ANSWER
    }

    /// Bytes of answers stored now.
    pub fn size(&self) -> u64 {
        self.lock().size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(max_size: u64, ttl: Duration) -> Cache {
        let config = CacheConfig {
            enabled: true,
            on_disk: false,
            max_size,
            ttl,
            per_client: true,
            when: policy::cache::When::Always,
            semantic: None,
        };
        Cache::open(&config, Path::new("/nonexistent")).unwrap().unwrap()
    }

    /// An answer of `bytes` that does not compress (pseudo-random, the same for a seed).
    fn entry(bytes: usize, seed: u64) -> Entry {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let body = (0..bytes)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect();
        Entry { content_type: "application/json".into(), body, prompt_tokens: 1, completion_tokens: 2 }
    }

    fn stored(e: &Entry) -> u64 {
        zstd::bulk::compress(&e.body, ZSTD_LEVEL).unwrap().len() as u64
    }

    #[test]
    fn bounded_in_bytes_least_recently_used_first() {
        let (ea, eb, ed) = (entry(100, 1), entry(100, 2), entry(150, 3));
        // Room for a and b, or a and d: not all three.
        let c = cache(stored(&ea) + stored(&ed), Duration::from_secs(60));
        let (a, b, d) = (key("a"), key("b"), key("d"));
        c.put(&a, &ea);
        c.put(&b, &eb);
        assert_eq!(c.get(&a), Some(ea.clone()), "stored compressed, read back whole");
        std::thread::sleep(Duration::from_millis(2));
        c.get(&a);
        c.put(&d, &ed);
        assert_eq!(c.size(), stored(&ea) + stored(&ed));
        assert!(c.get(&b).is_none(), "the least recently used went first");
        assert!(c.get(&a).is_some() && c.get(&d).is_some());
        let huge = entry(1000, 4);
        c.put(&key("huge"), &huge);
        assert!(c.get(&key("huge")).is_none(), "larger than the whole cache: not kept");
        let small = entry(10, 5);
        c.put(&a, &small);
        assert_eq!(c.size(), stored(&small) + stored(&ed), "a replaced entry counts once");
        // Text compresses: a 10 KiB answer of repeated tokens takes far less.
        let text = Entry { body: b"tok ".repeat(2560), ..small };
        c.put(&key("text"), &text);
        assert!(stored(&text) < 200 && c.get(&key("text")) == Some(text));
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let c = cache(1000, Duration::from_millis(1));
        c.put(&key("a"), &entry(10, 1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(c.get(&key("a")).is_none());
        assert_eq!(c.size(), 0);
    }

    #[test]
    fn the_nearest_vector_in_a_context_wins_above_the_threshold_and_goes_with_its_entry() {
        let c = cache(1 << 20, Duration::from_secs(60));
        let (ctx, other_ctx) = (key("context"), key("another"));
        let (a, b) = (key("a"), key("b"));
        c.put(&a, &entry(100, 1));
        c.put(&b, &entry(100, 2));
        c.put_vector(&a, &ctx, &[1.0, 0.0, 0.0]);
        c.put_vector(&b, &ctx, &[1.0, 1.0, 0.0]);
        let (found, similarity) = c.nearest(&ctx, &[1.0, 0.1, 0.0], 0.9).unwrap();
        assert_eq!(found, a);
        assert!(similarity > 0.99);
        assert!(c.nearest(&ctx, &[0.0, 0.0, 1.0], 0.5).is_none(), "nothing near enough");
        assert!(c.nearest(&other_ctx, &[1.0, 0.0, 0.0], 0.5).is_none(), "another context");
        // An evicted entry's vector goes with it.
        let small = cache(150, Duration::from_secs(60));
        small.put(&a, &entry(100, 1));
        small.put_vector(&a, &ctx, &[1.0, 0.0, 0.0]);
        small.put(&b, &entry(100, 2));
        assert!(small.nearest(&ctx, &[1.0, 0.0, 0.0], 0.5).is_none());
    }
}
