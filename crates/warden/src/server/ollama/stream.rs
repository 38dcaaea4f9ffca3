//! An OpenAI event stream (SSE) translated, event by event, into Ollama's NDJSON stream: one
//! line per token delta, then a closing line with `done`, `done_reason`, counts and durations.
//! The upstream body is read to its end, so the lease and ticket it carries settle as usual.

use std::time::Instant;

use axum::body::{Body, Bytes};
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::translate::{self, Call};

struct Translator {
    call: Call,
    model: String,
    /// Bytes of an event line not yet complete.
    pending: Vec<u8>,
    usage: Value,
    finish: Value,
    started: Instant,
    /// When the first token came (the prompt's evaluation ends there).
    first_token_ns: Option<u64>,
}

impl Translator {
    /// The NDJSON lines the complete SSE lines in `chunk` make.
    fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let Some(data) = std::str::from_utf8(&line).ok().and_then(|l| l.trim().strip_prefix("data:")) else {
                continue;
            };
            let Ok(event) = serde_json::from_str::<Value>(data.trim()) else { continue };
            if let Some(line) = self.event(&event) {
                out.extend_from_slice(line.to_string().as_bytes());
                out.push(b'\n');
            }
        }
        out
    }

    /// One OpenAI chunk → an Ollama line, if it carries text or tool calls.
    fn event(&mut self, event: &Value) -> Option<Value> {
        if !event["usage"].is_null() {
            self.usage = event["usage"].clone();
        }
        let choice = &event["choices"][0];
        if !choice["finish_reason"].is_null() {
            self.finish = choice["finish_reason"].clone();
        }
        let text = choice["delta"]["content"].as_str().or_else(|| choice["text"].as_str()).unwrap_or_default();
        let calls = choice["delta"]["tool_calls"].as_array().filter(|c| !c.is_empty());
        if text.is_empty() && calls.is_none() {
            return None;
        }
        self.first_token_ns.get_or_insert_with(|| self.started.elapsed().as_nanos() as u64);
        let mut line = json!({"model": self.model, "created_at": translate::created_at(), "done": false});
        match self.call {
            Call::Generate => line["response"] = json!(text),
            _ => {
                let mut message = json!({"role": "assistant", "content": text});
                if let Some(calls) = calls {
                    message["tool_calls"] = Value::Array(calls.iter().map(translate::tool_call).collect());
                }
                line["message"] = message;
            }
        }
        Some(line)
    }

    /// The closing line.
    fn close(&self) -> Vec<u8> {
        let total_ns = self.started.elapsed().as_nanos() as u64;
        let mut line = json!({"model": self.model, "created_at": translate::created_at(), "done": true,
            "done_reason": translate::done_reason(&self.finish)});
        match self.call {
            Call::Generate => line["response"] = json!(""),
            _ => line["message"] = json!({"role": "assistant", "content": ""}),
        }
        if let Some(m) = line.as_object_mut() {
            m.extend(translate::totals(&self.usage, total_ns, self.first_token_ns));
        }
        let mut out = line.to_string().into_bytes();
        out.push(b'\n');
        out
    }
}

/// The NDJSON body for an OpenAI stream answering `call` for `model`.
pub fn ndjson(call: Call, model: String, upstream: Body, started: Instant) -> Body {
    let t = Translator {
        call,
        model,
        pending: Vec::new(),
        usage: Value::Null,
        finish: Value::Null,
        started,
        first_token_ns: None,
    };
    let stream = futures_util::stream::unfold(Some((upstream.into_data_stream(), t)), |state| async move {
        let (mut upstream, mut t) = state?;
        loop {
            match upstream.next().await {
                Some(Ok(chunk)) => {
                    let lines = t.feed(&chunk);
                    if !lines.is_empty() {
                        return Some((Ok(Bytes::from(lines)), Some((upstream, t))));
                    }
                }
                // The service broke off mid-answer: so does this stream (no false `done`).
                Some(Err(e)) => return Some((Err(std::io::Error::other(e)), None)),
                None => return Some((Ok(Bytes::from(t.close())), None)),
            }
        }
    });
    Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_become_ndjson_lines_and_a_closing_one() {
        let mut t = Translator {
            call: Call::Chat,
            model: "m".into(),
            pending: Vec::new(),
            usage: Value::Null,
            finish: Value::Null,
            started: Instant::now(),
            first_token_ns: None,
        };
        let sse = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"length\"}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
        // Split mid-line: a line is only read once it is whole.
        let (a, b) = sse.as_bytes().split_at(70);
        let mut out = t.feed(a);
        out.extend(t.feed(b));
        out.extend(t.close());
        let lines: Vec<Value> =
            String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0]["message"]["content"], "Hel");
        assert_eq!(lines[1]["message"]["content"], "lo");
        assert_eq!(lines[2]["done"], true);
        assert_eq!(lines[2]["done_reason"], "length");
        assert_eq!((lines[2]["prompt_eval_count"].clone(), lines[2]["eval_count"].clone()), (json!(3), json!(2)));
    }
}
