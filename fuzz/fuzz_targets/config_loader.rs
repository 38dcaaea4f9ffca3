//! The config loader: any text gives a config or an error naming a key, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(e) = warden::config::parse(text, std::path::Path::new("/nonexistent")) {
        let _ = e.to_string();
    }
});
