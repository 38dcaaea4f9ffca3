//! The usage scanner reads every answer that is accounted, JSON or server-sent events, split
//! into chunks anywhere. Feeding the same bytes in one piece or in the fuzzer's chunks must
//! find the same usage, and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden::account::usage::Scanner;

fuzz_target!(|input: (bool, Vec<u8>, Vec<u16>)| {
    let (sse, bytes, cuts) = input;
    let mut whole = Scanner::new(sse);
    whole.feed(&bytes);
    let delivered = whole.delivered_tokens();
    let expected = whole.finish();
    let mut chunked = Scanner::new(sse);
    let mut rest = &bytes[..];
    for cut in cuts {
        let at = (cut as usize).min(rest.len());
        chunked.feed(&rest[..at]);
        rest = &rest[at..];
    }
    chunked.feed(rest);
    assert_eq!(chunked.delivered_tokens(), delivered);
    assert_eq!(chunked.finish(), expected);
});
