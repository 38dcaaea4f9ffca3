//! The first look at every model request's body: the nesting guard and the `model` sniffer.
//! Anything may come in; nothing may panic, and a body that passes the guard nests within it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden::pipeline::{model_of, nesting_within};

fuzz_target!(|body: &[u8]| {
    let shallow = nesting_within(body, 128);
    if model_of(body).is_ok() {
        assert!(shallow, "a model was read from a body nested past the limit");
    }
});
