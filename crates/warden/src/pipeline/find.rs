//! Stage 2: the model a request body names, found without building the whole document.

use std::borrow::Cow;

use serde::Deserialize;

use crate::base::errors::ApiError;

/// Nesting deeper than this is refused: no real request comes close (serde_json's own limit
/// for documents it builds is 128), and a body nested 100,000 levels deep crashed a backend's
/// request handler when it was passed on.
pub const MAX_DEPTH: usize = 128;

/// Whether `body` nests arrays and objects at most `limit` deep. One pass over the bytes
/// (strings skipped, escapes honoured); it does not validate the JSON.
pub fn nesting_within(body: &[u8], limit: usize) -> bool {
    // Depth cannot pass the number of openings: a count settles almost every real body
    // without the walk below. Counted in byte-wide sums over chunks that cannot overflow one,
    // which the compiler turns into 32 bytes a step (8 instructions a byte as a plain count).
    let openings: usize =
        body.chunks(255).map(|c| c.iter().fold(0u8, |n, &b| n + u8::from((b == b'{') | (b == b'['))) as usize).sum();
    if openings <= limit {
        return true;
    }
    // A long conversation has more openings than that: walk it, jumping over each string to
    // its next quote or backslash (memchr's vector search) rather than looking at every byte
    // of the text, most of such a body (finding the model in a 63 KiB chat body: 54 µs, against
    // 123 µs byte by byte; BENCHMARKS.md, P6).
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = body.get(i) {
        i += 1;
        match b {
            b'"' => loop {
                // An unterminated string: nothing more nests (the parser says what is wrong).
                let Some(rest) = body.get(i..) else { return true };
                match memchr::memchr2(b'"', b'\\', rest) {
                    None => return true,
                    // An escape: the byte after it is text, whatever it is.
                    Some(j) if rest[j] == b'\\' => i += j + 2,
                    Some(j) => {
                        i += j + 1;
                        break;
                    }
                }
            },
            _ => match nest(depth, b, limit) {
                Some(d) => depth = d,
                None => return false,
            },
        }
    }
    true
}

/// The depth after byte `b` outside a string; None past `limit`.
fn nest(depth: usize, b: u8, limit: usize) -> Option<usize> {
    match b {
        b'{' | b'[' => Some(depth + 1).filter(|&d| d <= limit),
        b'}' | b']' => Some(depth.saturating_sub(1)),
        _ => Some(depth),
    }
}

/// The body's `model` string. 400 when the body is not a JSON object with one, or nests
/// deeper than [`MAX_DEPTH`].
pub fn model_of(body: &[u8]) -> Result<Cow<'_, str>, ApiError> {
    if !nesting_within(body, MAX_DEPTH) {
        return Err(ApiError::BadRequest(format!("request body nests deeper than {MAX_DEPTH} levels")));
    }
    #[derive(Deserialize)]
    struct ModelOnly<'a> {
        #[serde(borrow)]
        model: Option<Cow<'a, str>>,
    }
    match serde_json::from_slice::<ModelOnly>(body) {
        Ok(ModelOnly { model: Some(m) }) => Ok(m),
        Ok(ModelOnly { model: None }) => Err(ApiError::MissingModel),
        Err(e) if e.is_data() => {
            Err(ApiError::BadRequest(format!("request body must be a JSON object with a \"model\" string: {e}")))
        }
        Err(e) => Err(ApiError::BadJson(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The depth walk byte by byte, as it was written first: the reference for how strings
    /// are skipped (brackets are counted by the same `nest`).
    fn nesting_by_bytes(body: &[u8], limit: usize) -> bool {
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        for &b in body {
            if in_string {
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            match (b, nest(depth, b, limit)) {
                (b'"', _) => in_string = true,
                (_, Some(d)) => depth = d,
                (_, None) => return false,
            }
        }
        true
    }

    proptest! {
        /// Skipping strings by search decides as the byte-by-byte walk: brackets in strings,
        /// escaped quotes, escapes at the end, unterminated strings.
        #[test]
        fn the_string_skip_decides_as_the_byte_walk(
            body in proptest::collection::vec(proptest::sample::select(b"{}[]\"\\a".to_vec()), 0..64),
            limit in 0usize..4,
        ) {
            prop_assert_eq!(nesting_within(&body, limit), nesting_by_bytes(&body, limit));
        }
    }

    #[test]
    fn finds_the_model() {
        assert_eq!(model_of(br#"{"messages":[{"a":1}],"model":"tiny"}"#).unwrap(), "tiny");
        assert_eq!(model_of(br#"{"model":"t\u00e9"}"#).unwrap(), "té");
        assert!(matches!(model_of(br#"{"messages":[]}"#), Err(ApiError::MissingModel)));
        assert!(matches!(model_of(br#"{"model": 3}"#), Err(ApiError::BadRequest(_))));
        assert!(matches!(model_of(br#"[1,2]"#), Err(ApiError::BadRequest(_))));
        assert!(matches!(model_of(br#"{"model":"x""#), Err(ApiError::BadJson(_))));
        assert!(matches!(model_of(b"not json"), Err(ApiError::BadJson(_))));
    }

    #[test]
    fn deep_nesting_is_refused_before_anything_reads_it() {
        let deep = |n: usize| format!("{{\"model\":\"m\",\"x\":{}{}}}", "[".repeat(n), "]".repeat(n));
        assert!(model_of(deep(100).as_bytes()).is_ok());
        assert!(matches!(model_of(deep(MAX_DEPTH).as_bytes()), Err(ApiError::BadRequest(_))));
        assert!(
            matches!(model_of(deep(100_000).as_bytes()), Err(ApiError::BadRequest(m)) if m.contains("nests deeper"))
        );
        // Brackets inside strings (escaped quotes too) are text, not nesting.
        let text = format!("{{\"model\":\"m\",\"s\":\"\\\"{}\"}}", "[".repeat(1000));
        assert!(nesting_within(text.as_bytes(), 2), "{text}");
        assert!(!nesting_within(b"[[[", 2));
        // Many openings, none deep: the count alone cannot settle it, the walk does.
        let wide = format!("{{\"model\":\"m\",\"x\":[{}{{}}]}}", "{},".repeat(1000));
        assert!(nesting_within(wide.as_bytes(), 3) && !nesting_within(wide.as_bytes(), 2));
        assert!(model_of(wide.as_bytes()).is_ok());
    }
}
