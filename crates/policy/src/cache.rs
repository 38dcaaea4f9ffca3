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

/// For the semantic cache: the key text of everything but the last user message (requests with
/// the same context differ only in that message), and that message's text. None for a request
/// that is not a chat whose last message is the user's, in text.
pub fn semantic_parts(path: &str, scope: &str, body: &Value) -> Option<(String, String)> {
    let messages = body.get("messages")?.as_array()?;
    let last = messages.last()?;
    if last.get("role")?.as_str()? != "user" {
        return None;
    }
    let text = match last.get("content")? {
        Value::String(s) => s.clone(),
        // Content parts: their text, in order; a part that is not text (an image) is not
        // something an embedding of the text can stand for.
        Value::Array(parts) => {
            let texts: Option<Vec<&str>> =
                parts.iter().map(|p| (p.get("type")?.as_str()? == "text").then(|| p.get("text")?.as_str())?).collect();
            texts?.join("\n")
        }
        _ => return None,
    };
    let mut context = body.clone();
    let n = messages.len();
    context["messages"][n - 1]["content"] = Value::Null;
    Some((key_text(path, scope, &context), text))
}

/// Cosine similarity of two vectors (0 when either is zero or their lengths differ).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    dot / (na.sqrt() * nb.sqrt())
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

    #[test]
    fn semantic_parts_split_the_last_user_message_from_its_context() {
        let ask = |q: &str, t: f64| {
            json!({"model": "m", "temperature": t, "messages": [
            {"role": "system", "content": "be brief"}, {"role": "user", "content": q}]})
        };
        let (c1, t1) = semantic_parts("/p", "s", &ask("capital of France?", 0.0)).unwrap();
        let (c2, t2) = semantic_parts("/p", "s", &ask("capital of Spain?", 0.0)).unwrap();
        assert_eq!(c1, c2, "only the last message differs");
        assert_eq!((t1.as_str(), t2.as_str()), ("capital of France?", "capital of Spain?"));
        assert_ne!(c1, semantic_parts("/p", "s", &ask("capital of France?", 0.5)).unwrap().0, "other fields count");
        assert_ne!(c1, semantic_parts("/p", "t", &ask("capital of France?", 0.0)).unwrap().0, "so does the scope");
        let parts = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]});
        assert_eq!(semantic_parts("/p", "s", &parts).unwrap().1, "a\nb");
        let image =
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]});
        assert!(semantic_parts("/p", "s", &image).is_none());
        let assistant_last =
            json!({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]});
        assert!(semantic_parts("/p", "s", &assistant_last).is_none());
        assert!(semantic_parts("/p", "s", &json!({"input": "x"})).is_none());
    }

    #[test]
    fn cosine_is_one_for_the_same_direction_and_zero_for_orthogonal() {
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-9);
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 1.0]), 0.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
        assert_eq!(cosine(&[1.0], &[1.0, 1.0]), 0.0);
    }
}
