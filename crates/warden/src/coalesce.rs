//! Embeddings coalescing, the meeting point: requests for the same model and parameters that
//! arrive within a window join one open batch. The first is its leader: when the window ends
//! (or the batch is full) it closes the batch, sends it upstream as one call and hands each
//! member its part. Sending and splitting are the pipeline's (`pipeline/coalesce.rs`); this is
//! only who waits for whom. Every wait is bounded by the leader's: a leader that goes away
//! (its client left) tells everyone still waiting to go alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{oneshot, Notify};

/// A member's share of a coalesced answer.
#[derive(Debug)]
pub struct Answer {
    /// The body it would have got alone (its vectors, its indices, its usage).
    pub body: Bytes,
    pub prompt_tokens: u64,
    /// How many requests shared the call.
    pub together: usize,
}

/// What a member is told.
#[derive(Debug)]
pub enum Outcome {
    Done(Answer),
    /// The combined call failed or could not be made: send the request on its own.
    Alone,
}

/// A request's items in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// Where its items start in the combined input.
    pub offset: usize,
    pub count: usize,
    /// What its items count for when usage is shared.
    pub weight: u64,
}

struct Open {
    id: u64,
    items: Vec<Value>,
    /// The leader's part first.
    parts: Vec<Part>,
    /// One per part after the leader's.
    members: Vec<oneshot::Sender<Outcome>>,
    max: usize,
    /// Told when the batch is full, so the leader need not wait out the window.
    full: Arc<Notify>,
}

#[derive(Default)]
pub struct Batches {
    state: Mutex<State>,
    next_id: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct State {
    /// Open batches by key (model, parameters, kind of input): one per key takes joiners.
    open: HashMap<String, Open>,
    /// Batches that filled up, by id, until their leaders take them: the next request with
    /// the same key opens a new batch rather than waiting for a full one to go.
    sealed: HashMap<u64, Open>,
}

/// A request's place: it leads a batch, waits as a member, or goes alone (its items alone
/// fill a call).
pub enum Role<'a> {
    Lead(Lead<'a>),
    Member(oneshot::Receiver<Outcome>),
    Alone,
}

/// The leader of an open batch.
pub struct Lead<'a> {
    batches: &'a Batches,
    key: String,
    id: u64,
    pub full: Arc<Notify>,
    closed: bool,
}

/// A batch closed by its leader: what to send, and to whom the answers go.
pub struct Batch {
    pub items: Vec<Value>,
    pub parts: Vec<Part>,
    pub members: Vec<oneshot::Sender<Outcome>>,
}

impl Batches {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins the open batch under `key` with `items` (their weight together), or opens one.
    pub fn join(&self, key: &str, items: Vec<Value>, weight: u64, max: usize) -> Role<'_> {
        let mut st = self.lock();
        let count = items.len();
        if count >= max {
            return Role::Alone;
        }
        if let Some(batch) = st.open.get_mut(key) {
            if batch.items.len() + count <= batch.max {
                let (tx, rx) = oneshot::channel();
                batch.parts.push(Part { offset: batch.items.len(), count, weight });
                batch.items.extend(items);
                batch.members.push(tx);
                if batch.items.len() >= batch.max {
                    let full = st.open.remove(key).expect("just joined");
                    full.full.notify_one();
                    st.sealed.insert(full.id, full);
                }
                return Role::Member(rx);
            }
            // It does not fit: that batch goes as it is, and this request opens the next.
            let full = st.open.remove(key).expect("present");
            full.full.notify_one();
            st.sealed.insert(full.id, full);
        }
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let full = Arc::new(Notify::new());
        let batch = Open {
            id,
            items,
            parts: vec![Part { offset: 0, count, weight }],
            members: Vec::new(),
            max,
            full: full.clone(),
        };
        st.open.insert(key.to_string(), batch);
        Role::Lead(Lead { batches: self, key: key.to_string(), id, full, closed: false })
    }
}

impl Lead<'_> {
    /// Closes the batch: no one joins it any more.
    pub fn close(mut self) -> Batch {
        self.closed = true;
        self.take().expect("a lead's batch stays open until it closes it")
    }

    fn take(&self) -> Option<Batch> {
        let mut st = self.batches.lock();
        let b = match st.sealed.remove(&self.id) {
            Some(b) => b,
            None if st.open.get(&self.key).is_some_and(|b| b.id == self.id) => st.open.remove(&self.key)?,
            None => return None,
        };
        Some(Batch { items: b.items, parts: b.parts, members: b.members })
    }
}

impl Drop for Lead<'_> {
    /// A leader that goes before closing its batch (its client left) sends everyone alone.
    fn drop(&mut self) {
        if !self.closed {
            if let Some(batch) = self.take() {
                for m in batch.members {
                    let _ = m.send(Outcome::Alone);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_first_leads_the_rest_join_until_full() {
        let b = Batches::default();
        let Role::Lead(lead) = b.join("k", vec![json!("a")], 1, 3) else { panic!("leads") };
        let Role::Member(_m1) = b.join("k", vec![json!("b")], 1, 3) else { panic!("joins") };
        assert!(matches!(b.join("other", vec![json!("x")], 1, 3), Role::Lead(_)), "another key, another batch");
        let Role::Member(_m2) = b.join("k", vec![json!("c")], 1, 3) else { panic!("joins") };
        // Full: the next request opens a new batch at once, while the full one waits for its leader.
        let Role::Lead(next) = b.join("k", vec![json!("e")], 1, 3) else { panic!("leads the next batch") };
        let batch = lead.close();
        assert_eq!(batch.items, vec![json!("a"), json!("b"), json!("c")]);
        assert_eq!(batch.parts[2], Part { offset: 2, count: 1, weight: 1 });
        assert_eq!(batch.members.len(), 2);
        let Role::Member(_m3) = b.join("k", vec![json!("f")], 1, 3) else { panic!("joins") };
        // Items that do not fit the open batch send it on and open another.
        let Role::Lead(third) = b.join("k", vec![json!("g"), json!("h")], 2, 3) else { panic!("leads") };
        assert_eq!(next.close().items, vec![json!("e"), json!("f")]);
        assert_eq!(third.close().items.len(), 2);
        assert!(
            matches!(b.join("k", vec![json!("x"), json!("y"), json!("z")], 3, 3), Role::Alone),
            "fills a call alone"
        );
    }

    #[test]
    fn a_leader_that_goes_sends_its_members_alone() {
        let b = Batches::default();
        let lead = b.join("k", vec![json!("a")], 1, 8);
        let Role::Member(mut rx) = b.join("k", vec![json!("b")], 1, 8) else { panic!("joins") };
        drop(lead);
        assert!(matches!(rx.try_recv(), Ok(Outcome::Alone)));
    }
}
