//! Ollama's request and answer shapes ↔ OpenAI's, as plain JSON functions: the front door
//! translates on the way in, the pipeline runs the OpenAI request as any other, and the answer
//! is translated on the way out (streams event by event, in `stream.rs`).

use serde_json::{json, Map, Value};

use crate::pipeline::Endpoint;

/// Which Ollama call a request is, which decides both translations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Chat,
    Generate,
    /// `/api/embed` (`input`, answers `embeddings`).
    Embed,
    /// `/api/embeddings`, the older one (`prompt`, answers `embedding`).
    Embeddings,
}

impl Call {
    pub fn endpoint(self, body: &Value) -> Endpoint {
        match self {
            Call::Chat => Endpoint::Chat,
            // A raw prompt skips the chat template, as Ollama's `raw` does.
            Call::Generate if body["raw"] == json!(true) => Endpoint::Completions,
            Call::Generate => Endpoint::Chat,
            Call::Embed | Call::Embeddings => Endpoint::Embeddings,
        }
    }

    /// The same call in Ollama's own dialect, for an Ollama server (no translation).
    pub fn native(self) -> Endpoint {
        match self {
            Call::Chat => Endpoint::OllamaChat,
            Call::Generate => Endpoint::OllamaGenerate,
            Call::Embed => Endpoint::OllamaEmbed,
            Call::Embeddings => Endpoint::OllamaEmbeddings,
        }
    }

    /// Ollama streams chat and generate unless told not to.
    pub fn streams(self, body: &Value) -> bool {
        matches!(self, Call::Chat | Call::Generate) && body["stream"] != json!(false)
    }
}

/// The OpenAI body for an Ollama request; Err says what is wrong with it (400).
pub fn request(call: Call, body: &Value) -> Result<Value, String> {
    let model = body["model"].as_str().filter(|m| !m.is_empty()).ok_or("model is required")?;
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    match (call, call.endpoint(body)) {
        (Call::Chat, _) => {
            let messages = body["messages"].as_array().ok_or("messages must be a list")?;
            out.insert("messages".into(), Value::Array(messages.iter().map(message).collect()));
        }
        (Call::Generate, Endpoint::Completions) => {
            out.insert("prompt".into(), json!(body["prompt"].as_str().unwrap_or_default()));
        }
        (Call::Generate, _) => {
            let mut messages = Vec::new();
            if let Some(system) = body["system"].as_str() {
                messages.push(json!({"role": "system", "content": system}));
            }
            messages.push(json!({"role": "user", "content": body["prompt"].as_str().unwrap_or_default()}));
            out.insert("messages".into(), Value::Array(messages));
        }
        (Call::Embed, _) => {
            let input = &body["input"];
            if !(input.is_string() || input.is_array()) {
                return Err("input must be a string or a list of strings".into());
            }
            out.insert("input".into(), input.clone());
        }
        (Call::Embeddings, _) => {
            out.insert("input".into(), json!(body["prompt"].as_str().ok_or("prompt must be a string")?));
        }
    }
    if matches!(call, Call::Chat | Call::Generate) {
        let stream = call.streams(body);
        out.insert("stream".into(), json!(stream));
        if stream {
            // Ollama's closing line carries the counts: ask the stream for them.
            out.insert("stream_options".into(), json!({"include_usage": true}));
        }
        options(&body["options"], &mut out);
        if body["format"] == json!("json") {
            out.insert("response_format".into(), json!({"type": "json_object"}));
        } else if body["format"].is_object() {
            let schema = body["format"].clone();
            out.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": "format", "schema": schema}}),
            );
        }
        if let Some(tools) = body.get("tools").filter(|t| t.is_array()) {
            out.insert("tools".into(), tools.clone());
        }
    }
    Ok(Value::Object(out))
}

/// An Ollama chat message as OpenAI's: images become image parts.
fn message(m: &Value) -> Value {
    let role = m["role"].as_str().unwrap_or("user");
    let text = m["content"].as_str().unwrap_or_default();
    match m["images"].as_array().filter(|i| !i.is_empty()) {
        None => json!({"role": role, "content": text}),
        Some(images) => {
            let mut parts = vec![json!({"type": "text", "text": text})];
            for image in images.iter().filter_map(Value::as_str) {
                parts
                    .push(json!({"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{image}")}}));
            }
            json!({"role": role, "content": parts})
        }
    }
}

/// Ollama's `options` that OpenAI-compatible servers understand.
fn options(options: &Value, out: &mut Map<String, Value>) {
    let Some(options) = options.as_object() else { return };
    for (ours, theirs) in [
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("seed", "seed"),
        ("num_predict", "max_tokens"),
        ("stop", "stop"),
        ("frequency_penalty", "frequency_penalty"),
        ("presence_penalty", "presence_penalty"),
        // llama-server's own (it reads OpenAI bodies with its sampling extras).
        ("top_k", "top_k"),
        ("min_p", "min_p"),
        ("repeat_penalty", "repeat_penalty"),
        ("ignore_eos", "ignore_eos"),
    ] {
        if let Some(v) = options.get(ours) {
            // Ollama's "no limit" (-1, -2) is OpenAI's leaving it out.
            if ours == "num_predict" && v.as_i64().is_some_and(|n| n < 0) {
                continue;
            }
            out.insert(theirs.into(), v.clone());
        }
    }
}

/// When the answer was made, as Ollama writes it (RFC 3339, UTC).
pub fn created_at() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// OpenAI's finish reason as Ollama's `done_reason`.
pub fn done_reason(finish: &Value) -> &'static str {
    match finish.as_str() {
        Some("length") => "length",
        _ => "stop",
    }
}

/// What closes every Ollama answer: counts and durations (nanoseconds).
pub fn totals(usage: &Value, total_ns: u64, first_token_ns: Option<u64>) -> Map<String, Value> {
    let prompt = usage["prompt_tokens"].as_u64().unwrap_or(0);
    let eval = usage["completion_tokens"].as_u64().unwrap_or(0);
    let prompt_ns = first_token_ns.unwrap_or(total_ns / 2).min(total_ns);
    let mut m = Map::new();
    m.insert("total_duration".into(), json!(total_ns));
    m.insert("load_duration".into(), json!(0));
    m.insert("prompt_eval_count".into(), json!(prompt));
    m.insert("prompt_eval_duration".into(), json!(prompt_ns));
    m.insert("eval_count".into(), json!(eval));
    m.insert("eval_duration".into(), json!(total_ns - prompt_ns));
    m
}

/// A whole (not streamed) OpenAI answer as Ollama's.
pub fn answer(call: Call, model: &str, openai: &Value, total_ns: u64) -> Value {
    let choice = &openai["choices"][0];
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    match call {
        Call::Embed => {
            let embeddings: Vec<Value> =
                openai["data"].as_array().into_iter().flatten().map(|d| d["embedding"].clone()).collect();
            out.insert("embeddings".into(), Value::Array(embeddings));
            out.insert("total_duration".into(), json!(total_ns));
            out.insert("load_duration".into(), json!(0));
            out.insert("prompt_eval_count".into(), json!(openai["usage"]["prompt_tokens"].as_u64().unwrap_or(0)));
            return Value::Object(out);
        }
        Call::Embeddings => return json!({"embedding": openai["data"][0]["embedding"].clone()}),
        Call::Chat => {
            out.insert("created_at".into(), json!(created_at()));
            let mut message = json!({"role": "assistant", "content": text_of(choice)});
            if let Some(calls) = choice["message"]["tool_calls"].as_array() {
                message["tool_calls"] = Value::Array(calls.iter().map(tool_call).collect());
            }
            out.insert("message".into(), message);
        }
        Call::Generate => {
            out.insert("created_at".into(), json!(created_at()));
            out.insert("response".into(), json!(text_of(choice)));
        }
    }
    out.insert("done".into(), json!(true));
    out.insert("done_reason".into(), json!(done_reason(&choice["finish_reason"])));
    out.extend(totals(&openai["usage"], total_ns, None));
    Value::Object(out)
}

/// A choice's text: a chat message's content or a completion's text.
fn text_of(choice: &Value) -> &str {
    choice["message"]["content"].as_str().or_else(|| choice["text"].as_str()).unwrap_or_default()
}

/// An OpenAI tool call as Ollama's (arguments as an object, not a JSON string).
pub fn tool_call(call: &Value) -> Value {
    let f = &call["function"];
    let args = f["arguments"].as_str().and_then(|a| serde_json::from_str(a).ok()).unwrap_or_else(|| json!({}));
    json!({"function": {"name": f["name"], "arguments": args}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_requests_keep_messages_options_and_stream() {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi", "images": ["AAAA"]}],
            "options": {"temperature": 0.1, "num_predict": 5, "top_k": 3, "num_ctx": 99}, "format": "json"});
        let out = request(Call::Chat, &body).unwrap();
        assert_eq!(out["stream"], true, "Ollama streams unless told not to");
        assert_eq!(out["max_tokens"], 5);
        assert_eq!(out["temperature"], 0.1);
        assert_eq!(out["top_k"], 3);
        assert!(out.get("num_ctx").is_none());
        assert_eq!(out["response_format"]["type"], "json_object");
        assert_eq!(out["messages"][0]["content"][1]["image_url"]["url"], "data:image/png;base64,AAAA");
        assert!(request(Call::Chat, &json!({"model": "m"})).unwrap_err().contains("messages"));
        assert!(request(Call::Chat, &json!({"messages": []})).unwrap_err().contains("model"));
    }

    #[test]
    fn generate_is_a_chat_turn_unless_raw() {
        let body = json!({"model": "m", "prompt": "why", "system": "be brief", "stream": false});
        assert_eq!(Call::Generate.endpoint(&body), Endpoint::Chat);
        let out = request(Call::Generate, &body).unwrap();
        assert_eq!(
            out["messages"],
            json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "why"}])
        );
        assert_eq!(out["stream"], false);
        let raw = json!({"model": "m", "prompt": "why", "raw": true});
        assert_eq!(Call::Generate.endpoint(&raw), Endpoint::Completions);
        assert_eq!(request(Call::Generate, &raw).unwrap()["prompt"], "why");
    }

    #[test]
    fn answers_carry_counts_durations_and_done_reason() {
        let openai = json!({"choices": [{"message": {"content": "hello"}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 2}});
        let out = answer(Call::Chat, "m", &openai, 1_000);
        assert_eq!(out["message"], json!({"role": "assistant", "content": "hello"}));
        assert_eq!((out["done"].clone(), out["done_reason"].clone()), (json!(true), json!("length")));
        assert_eq!((out["prompt_eval_count"].clone(), out["eval_count"].clone()), (json!(4), json!(2)));
        assert_eq!(out["total_duration"], 1_000);
        let emb = json!({"data": [{"embedding": [0.5]}, {"embedding": [0.25]}], "usage": {"prompt_tokens": 3}});
        assert_eq!(answer(Call::Embed, "m", &emb, 1)["embeddings"], json!([[0.5], [0.25]]));
        assert_eq!(answer(Call::Embeddings, "m", &emb, 1), json!({"embedding": [0.5]}));
    }

    #[test]
    fn created_at_is_rfc3339() {
        let t = created_at();
        assert!(t.ends_with('Z') && &t[10..11] == "T", "{t}");
    }
}
