//! What a priced request reserves, read (and maybe rewritten) from its body: never a panic, the
//! rewrite is JSON whenever the body was, and the reserve never shrinks below what was asked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy::estimate::prepare;

fuzz_target!(|input: (bool, u16, &[u8])| {
    let (embeddings, default_max, body) = input;
    let p = prepare(body, embeddings, u64::from(default_max));
    if let Some(rewritten) = &p.rewritten {
        if serde_json::from_slice::<serde_json::Value>(body).is_ok() {
            assert!(serde_json::from_slice::<serde_json::Value>(rewritten).is_ok(), "a rewrite broke the JSON");
        }
    }
    assert!(p.estimate.prompt_tokens >= 8);
});
