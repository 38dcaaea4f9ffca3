//! The OpenAI Batch API's pure parts: a batch's statuses, and checking an input file (JSONL,
//! one request per line) before any line runs, with OpenAI's error codes, so a bad file fails
//! whole at `validating` instead of half-way through.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A batch's status, as OpenAI names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
}

impl Status {
    /// Nothing more will happen to it.
    pub fn finished(self) -> bool {
        matches!(self, Status::Failed | Status::Completed | Status::Expired | Status::Cancelled)
    }
}

/// OpenAI's limit on requests in one batch.
pub const MAX_LINES: usize = 50_000;
/// Errors reported for one file at most (the first ones, by line).
const MAX_ERRORS: usize = 100;

/// One request of an input file.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub custom_id: String,
    /// The request body, as JSON text (what the endpoint is sent).
    pub body: String,
}

/// Why an input file was refused, one entry per bad line (OpenAI's `errors.data`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LineError {
    pub code: &'static str,
    pub message: String,
    /// 1-based; None for the file as a whole.
    pub line: Option<usize>,
    pub param: Option<&'static str>,
}

#[derive(Deserialize)]
struct RawLine {
    custom_id: Option<Value>,
    method: Option<Value>,
    url: Option<Value>,
    body: Option<Value>,
}

/// The lines of an input file for `endpoint`, or every error found (up to 100). Blank lines
/// are skipped; each other line must be `{"custom_id", "method": "POST", "url": endpoint,
/// "body": {...}}` with a `custom_id` no other line has.
pub fn parse_input(text: &[u8], endpoint: &str) -> Result<Vec<Line>, Vec<LineError>> {
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut error = |code, message: String, line, param| {
        if errors.len() < MAX_ERRORS {
            errors.push(LineError { code, message, line: Some(line), param });
        }
    };
    for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed: RawLine = match serde_json::from_slice(raw) {
            Ok(p) => p,
            Err(e) => {
                error("invalid_json_line", format!("line {n} is not a JSON object: {e}"), n, None);
                continue;
            }
        };
        let custom_id = match parsed.custom_id {
            Some(Value::String(s)) if !s.is_empty() => s,
            _ => {
                error("missing_required_parameter", format!("line {n} has no custom_id string"), n, Some("custom_id"));
                continue;
            }
        };
        if parsed.method.as_ref().and_then(Value::as_str) != Some("POST") {
            error("invalid_method", format!("line {n}: method must be \"POST\""), n, Some("method"));
            continue;
        }
        if parsed.url.as_ref().and_then(Value::as_str) != Some(endpoint) {
            let msg = format!("line {n}: url must be the batch's endpoint {endpoint:?}");
            error("mismatched_endpoint", msg, n, Some("url"));
            continue;
        }
        let body = match parsed.body {
            Some(b @ Value::Object(_)) => b,
            _ => {
                error("missing_required_parameter", format!("line {n} has no body object"), n, Some("body"));
                continue;
            }
        };
        if body.get("stream") == Some(&Value::Bool(true)) {
            error("invalid_request", format!("line {n}: a batch request cannot stream"), n, Some("body.stream"));
            continue;
        }
        if !seen.insert(custom_id.clone()) {
            error(
                "duplicate_custom_id",
                format!("line {n}: custom_id {custom_id:?} is used twice"),
                n,
                Some("custom_id"),
            );
            continue;
        }
        lines.push(Line { custom_id, body: body.to_string() });
    }
    if lines.is_empty() && errors.is_empty() {
        errors.push(LineError {
            code: "empty_file",
            message: "the input file has no requests".into(),
            line: None,
            param: None,
        });
    }
    if lines.len() > MAX_LINES {
        errors.insert(
            0,
            LineError {
                code: "too_many_tasks",
                message: format!("{} requests; a batch holds at most {MAX_LINES}", lines.len()),
                line: None,
                param: None,
            },
        );
    }
    if errors.is_empty() {
        Ok(lines)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "/v1/chat/completions";

    fn line(id: &str) -> String {
        format!(r#"{{"custom_id":"{id}","method":"POST","url":"{URL}","body":{{"model":"m","messages":[]}}}}"#)
    }

    #[test]
    fn good_lines_parse_in_order_and_blank_lines_are_skipped() {
        let text = format!("{}\n\n{}\n", line("a"), line("b"));
        let lines = parse_input(text.as_bytes(), URL).unwrap();
        assert_eq!(lines.iter().map(|l| l.custom_id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(lines[0].body, r#"{"messages":[],"model":"m"}"#);
    }

    #[test]
    fn each_kind_of_bad_line_is_named_with_its_line() {
        let text = [
            line("a"),
            "not json".into(),
            r#"{"method":"POST","url":"/v1/chat/completions","body":{}}"#.into(),
            r#"{"custom_id":"x","method":"GET","url":"/v1/chat/completions","body":{}}"#.into(),
            r#"{"custom_id":"y","method":"POST","url":"/v1/embeddings","body":{}}"#.into(),
            r#"{"custom_id":"z","method":"POST","url":"/v1/chat/completions"}"#.into(),
            line("a"),
            r#"{"custom_id":"s","method":"POST","url":"/v1/chat/completions","body":{"stream":true}}"#.into(),
        ]
        .join("\n");
        let errors = parse_input(text.as_bytes(), URL).unwrap_err();
        let got: Vec<(&str, Option<usize>)> = errors.iter().map(|e| (e.code, e.line)).collect();
        assert_eq!(
            got,
            [
                ("invalid_json_line", Some(2)),
                ("missing_required_parameter", Some(3)),
                ("invalid_method", Some(4)),
                ("mismatched_endpoint", Some(5)),
                ("missing_required_parameter", Some(6)),
                ("duplicate_custom_id", Some(7)),
                ("invalid_request", Some(8)),
            ]
        );
    }

    #[test]
    fn an_empty_file_is_refused() {
        assert_eq!(parse_input(b"\n \n", URL).unwrap_err()[0].code, "empty_file");
    }

    #[test]
    fn statuses_are_openais_names() {
        assert_eq!(serde_json::to_value(Status::InProgress).unwrap(), "in_progress");
        assert!(Status::Cancelled.finished() && !Status::Cancelling.finished());
    }
}
