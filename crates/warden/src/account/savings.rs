//! Savings the usage rows cannot hold, per client since warden started: bytes compression
//! saved on its answers (counted when an answer's body is done, after its row is written), and
//! upstream calls its embeddings requests saved by riding on another's coalesced call.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClientSavings {
    pub compression_bytes: u64,
    pub coalesced_calls: u64,
}

#[derive(Default)]
pub struct Savings {
    by_client: Mutex<HashMap<String, ClientSavings>>,
}

impl Savings {
    fn add(&self, client: &str, change: impl FnOnce(&mut ClientSavings)) {
        let mut map = self.by_client.lock().unwrap_or_else(|p| p.into_inner());
        change(map.entry(client.to_string()).or_default());
    }

    pub fn compressed(&self, client: &str, bytes: u64) {
        if bytes > 0 {
            self.add(client, |s| s.compression_bytes += bytes);
        }
    }

    pub fn coalesced(&self, client: &str) {
        self.add(client, |s| s.coalesced_calls += 1);
    }

    pub fn of(&self, client: &str) -> ClientSavings {
        self.by_client.lock().unwrap_or_else(|p| p.into_inner()).get(client).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_counts_apart() {
        let s = Savings::default();
        s.compressed("a", 100);
        s.compressed("a", 0);
        s.coalesced("b");
        s.coalesced("b");
        assert_eq!(s.of("a"), ClientSavings { compression_bytes: 100, coalesced_calls: 0 });
        assert_eq!(s.of("b"), ClientSavings { compression_bytes: 0, coalesced_calls: 2 });
        assert_eq!(s.of("c"), ClientSavings::default());
    }
}
