//! A Batch API input file, checked before any line runs: never a panic; every line accepted is
//! a JSON object body with a unique custom_id, and a refused file names at least one error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy::batch::parse_input;

fuzz_target!(|text: &[u8]| {
    match parse_input(text, "/v1/chat/completions") {
        Ok(lines) => {
            let mut ids = std::collections::HashSet::new();
            for l in &lines {
                assert!(ids.insert(l.custom_id.clone()), "a custom_id twice");
                assert!(serde_json::from_str::<serde_json::Value>(&l.body).unwrap().is_object());
            }
            assert!(!lines.is_empty());
        }
        Err(errors) => assert!(!errors.is_empty()),
    }
});
