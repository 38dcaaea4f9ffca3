//! The response cache shared by replicas: an answer one replica stored is a hit on another.
//! The key is the local cache's (it already holds the scope: the client, or everyone); the
//! value is the entry with its body zstd-compressed, kept for the cache's TTL.

use std::time::Duration;

use super::{Shared, Write};
use crate::cache::{Entry, Key};

/// zstd level: fast, and still several times smaller for text.
const LEVEL: i32 = 3;

impl Shared {
    fn answer_key(&self, key: &Key) -> String {
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        self.key(&format!("cache:{hex}"))
    }

    /// The answer another replica (or this one) stored under `key`; None on a miss, or when
    /// Redis is away (a miss costs an upstream call, never a wrong answer).
    pub async fn answer(&self, key: &Key, max_size: usize) -> Option<Entry> {
        let name = self.answer_key(key);
        let name = &name;
        let bytes: Option<Vec<u8>> =
            self.call(|mut con| async move { redis::cmd("GET").arg(name).query_async(&mut con).await }).await.ok()?;
        decode(&bytes?, max_size)
    }

    /// Keeps an answer for other replicas, for `ttl` (sent by the writer task, in order).
    pub fn keep_answer(&self, key: &Key, entry: &Entry, ttl: Duration) {
        if let Some(value) = encode(entry) {
            let _ = self.writes.send(Write::Answer { key: self.answer_key(key), value, ttl });
        }
    }

    pub(super) async fn keep(&self, name: &str, value: &[u8], ttl: Duration) -> Result<(), String> {
        let ms = ttl.as_millis().max(1) as u64;
        self.call(|mut con| async move {
            redis::cmd("SET").arg(name).arg(value).arg("PX").arg(ms).query_async(&mut con).await
        })
        .await
    }
}

/// prompt tokens (8 bytes), completion tokens (8), content type's length (2), content type,
/// then the body compressed.
fn encode(e: &Entry) -> Option<Vec<u8>> {
    let body = zstd::bulk::compress(&e.body, LEVEL).ok()?;
    let ct = e.content_type.as_bytes();
    let mut out = Vec::with_capacity(18 + ct.len() + body.len());
    out.extend_from_slice(&e.prompt_tokens.to_le_bytes());
    out.extend_from_slice(&e.completion_tokens.to_le_bytes());
    out.extend_from_slice(&u16::try_from(ct.len()).ok()?.to_le_bytes());
    out.extend_from_slice(ct);
    out.extend_from_slice(&body);
    Some(out)
}

/// An entry as `encode` wrote it; None for anything else (another writer's key, a version
/// mismatch): a miss.
fn decode(bytes: &[u8], max_size: usize) -> Option<Entry> {
    let prompt_tokens = u64::from_le_bytes(bytes.get(0..8)?.try_into().ok()?);
    let completion_tokens = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    let len = u16::from_le_bytes(bytes.get(16..18)?.try_into().ok()?) as usize;
    let content_type = String::from_utf8(bytes.get(18..18 + len)?.to_vec()).ok()?;
    let body = zstd::bulk::decompress(bytes.get(18 + len..)?, max_size).ok()?;
    Some(Entry { content_type, body, prompt_tokens, completion_tokens })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_comes_back_as_it_went_and_garbage_is_a_miss() {
        let e = Entry {
            content_type: "text/event-stream".into(),
            body: b"data: {\"x\": 1}\n\ndata: [DONE]\n\n".repeat(10),
            prompt_tokens: 12,
            completion_tokens: 34,
        };
        assert_eq!(decode(&encode(&e).unwrap(), 1 << 20), Some(e.clone()));
        assert_eq!(decode(b"not an entry", 1 << 20), None);
        // An entry that would unpack past the bound is a miss.
        assert_eq!(decode(&encode(&e).unwrap(), 10), None);
    }
}
