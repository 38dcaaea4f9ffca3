//! Response cache decisions: whether a request's answer may be cached, and the text its key is
//! made of. Pure.

use serde_json::Value;

/// When answers are cached (`[cache].when`, or a model's own `cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum When {
    /// Only answers that would come out the same again: temperature 0, or a seed set.
    Deterministic,
    Always,
    Never,
}

impl When {
    pub fn parse(text: &str) -> Option<When> {
        match text {
            "deterministic" => Some(When::Deterministic),
            "always" => Some(When::Always),
            "never" => Some(When::Never),
            _ => None,
        }
    }
}

/// Whether the answer to `body` may be cached under `when`.
pub fn cacheable(body: &Value, when: When) -> bool {
    match when {
        When::Always => true,
        When::Never => false,
        When::Deterministic => body["temperature"].as_f64() == Some(0.0) || !body["seed"].is_null(),
    }
}

/// The canonical text a request's cache key is the hash of: its path, its scope (a client's
/// name, or shared) and every field of its body except how the answer is delivered (`stream`,
/// `stream_options`), keys sorted at every level. Allow-listing fields instead would serve
/// one answer to requests that differ in a field nobody listed (reasoning effort, say).
pub fn key_text(path: &str, scope: &str, body: &Value) -> String {
    let mut body = body.clone();
    if let Some(obj) = body.as_object_mut() {
        obj.remove("stream");
        obj.remove("stream_options");
    }
    // serde_json's maps keep keys sorted (no `preserve_order`), so this text is canonical.
    format!("{path}\n{scope}\n{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deterministic_means_temperature_zero_or_a_seed() {
        assert!(cacheable(&json!({"temperature": 0}), When::Deterministic));
        assert!(cacheable(&json!({"temperature": 0.0}), When::Deterministic));
        assert!(cacheable(&json!({"temperature": 0.7, "seed": 4}), When::Deterministic));
        assert!(!cacheable(&json!({"temperature": 0.7}), When::Deterministic));
        assert!(!cacheable(&json!({}), When::Deterministic), "the default temperature is not 0");
        assert!(cacheable(&json!({}), When::Always));
        assert!(!cacheable(&json!({"temperature": 0}), When::Never));
    }

    #[test]
    fn every_field_but_delivery_is_in_the_key_whatever_its_order() {
        let a = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0});
        let b: Value =
            serde_json::from_str(r#"{"temperature":0,"messages":[{"content":"hi","role":"user"}],"model":"m"}"#)
                .unwrap();
        assert_eq!(key_text("/v1/chat/completions", "acme", &a), key_text("/v1/chat/completions", "acme", &b));
        let mut streamed = a.clone();
        streamed["stream"] = json!(true);
        streamed["stream_options"] = json!({"include_usage": true});
        assert_eq!(key_text("/p", "s", &a), key_text("/p", "s", &streamed), "delivery is not in the key");
        assert_ne!(key_text("/p", "acme", &a), key_text("/p", "bob", &a), "scope is");
        assert_ne!(key_text("/p", "s", &a), key_text("/q", "s", &a), "path is");
        let mut effort = a.clone();
        effort["reasoning_effort"] = json!("high");
        assert_ne!(key_text("/p", "s", &a), key_text("/p", "s", &effort));
    }
}
