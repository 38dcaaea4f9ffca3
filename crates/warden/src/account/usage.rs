//! Finds the usage an answer reports as the bytes pass through: OpenAI's `usage`, in a whole
//! JSON body or in the server-sent events of a stream, or Ollama's `prompt_eval_count` and
//! `eval_count`, in a JSON body or the last line of an NDJSON stream. Pure and bounded: at
//! most `LIMIT` bytes are kept.

use serde::Deserialize;

const LIMIT: usize = 4 << 20;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

/// What an answer reports using, in either dialect.
#[derive(Deserialize)]
struct WithUsage {
    usage: Option<Usage>,
    prompt_eval_count: Option<u64>,
    eval_count: Option<u64>,
}

impl WithUsage {
    fn usage(self) -> Option<Usage> {
        match (self.usage, self.prompt_eval_count, self.eval_count) {
            (Some(u), _, _) => Some(u),
            (None, None, None) => None,
            (None, p, e) => Some(Usage { prompt_tokens: p.unwrap_or(0), completion_tokens: e.unwrap_or(0) }),
        }
    }
}

/// How an answer's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One JSON document.
    Json,
    /// Server-sent events (`data: …` lines): OpenAI's streams.
    Sse,
    /// One JSON document per line (`application/x-ndjson`): Ollama's streams.
    Lines,
}

impl Framing {
    pub fn of(content_type: &str) -> Framing {
        // Most answers say just this: settled without the substring searches below.
        if content_type.starts_with("application/json") {
            Framing::Json
        } else if content_type.contains("event-stream") {
            Framing::Sse
        } else if content_type.contains("ndjson") {
            Framing::Lines
        } else {
            Framing::Json
        }
    }

    /// A stream of events, each one or a few tokens.
    pub fn streams(self) -> bool {
        self != Framing::Json
    }
}

pub struct Scanner {
    framing: Framing,
    /// JSON: the body so far. A stream: the current unfinished line.
    buf: Vec<u8>,
    overflow: bool,
    found: Option<Usage>,
    /// A stream: events that carried generated text (about one token each), for an answer cut
    /// before its usage.
    text_events: u64,
    /// Bytes seen, for a JSON answer cut before its end.
    bytes: u64,
}

impl Scanner {
    pub fn new(framing: Framing) -> Self {
        Scanner { framing, buf: Vec::new(), overflow: false, found: None, text_events: 0, bytes: 0 }
    }

    /// About how many completion tokens reached the client so far: one per text event of a
    /// stream (servers send a token or a few per event), or from the size of a JSON body.
    pub fn delivered_tokens(&self) -> u64 {
        if self.framing.streams() {
            self.text_events
        } else {
            policy::estimate::tokens_in(self.bytes)
        }
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        self.bytes += data.len() as u64;
        if !self.framing.streams() {
            if self.buf.len() + data.len() > LIMIT {
                self.overflow = true;
            } else {
                self.buf.extend_from_slice(data);
            }
            return;
        }
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            if self.buf.is_empty() {
                self.line(&data[..nl]);
            } else {
                self.buf.extend_from_slice(&data[..nl]);
                let line = std::mem::take(&mut self.buf);
                self.line(&line);
            }
            data = &data[nl + 1..];
        }
        if self.buf.len() + data.len() <= LIMIT {
            self.buf.extend_from_slice(data);
        }
    }

    fn line(&mut self, line: &[u8]) {
        let payload = match self.framing {
            Framing::Sse => match line.strip_prefix(b"data:") {
                Some(p) => p,
                None => return,
            },
            _ => line,
        };
        if ["\"content\"", "\"text\"", "\"response\""].iter().any(|k| memchr(payload, k.as_bytes())) {
            self.text_events += 1;
        }
        // Only chunks that mention usage are parsed: most carry one token.
        if memchr(payload, b"\"usage\"") || memchr(payload, b"eval_count\"") {
            if let Some(u) = serde_json::from_slice::<WithUsage>(payload.trim_ascii()).ok().and_then(WithUsage::usage) {
                self.found = Some(u);
            }
        }
    }

    /// The usage reported, if the answer had one.
    pub fn finish(mut self) -> Option<Usage> {
        if self.framing.streams() {
            let rest = std::mem::take(&mut self.buf);
            self.line(&rest);
            return self.found;
        }
        if self.overflow {
            return None;
        }
        serde_json::from_slice::<WithUsage>(&self.buf).ok().and_then(WithUsage::usage)
    }
}

fn memchr(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ollama_counts_in_json_and_ndjson() {
        let mut s = Scanner::new(Framing::Json);
        s.feed(br#"{"model":"m","response":"a b","done":true,"prompt_eval_count":7,"eval_count":2}"#);
        assert_eq!(s.finish(), Some(Usage { prompt_tokens: 7, completion_tokens: 2 }));
        let stream = "{\"message\":{\"content\":\"tok0 \"},\"done\":false}\n\
                      {\"message\":{\"content\":\"tok1 \"},\"done\":false}\n\
                      {\"message\":{\"content\":\"\"},\"done\":true,\"prompt_eval_count\":4,\"eval_count\":2}\n";
        for cut in 0..stream.len() {
            let mut s = Scanner::new(Framing::Lines);
            s.feed(&stream.as_bytes()[..cut]);
            s.feed(&stream.as_bytes()[cut..]);
            assert_eq!(s.finish(), Some(Usage { prompt_tokens: 4, completion_tokens: 2 }), "cut at {cut}");
        }
        let mut s = Scanner::new(Framing::Lines);
        s.feed(&stream.as_bytes()[..60]);
        assert_eq!(s.delivered_tokens(), 1);
        assert_eq!(Framing::of("application/x-ndjson"), Framing::Lines);
        assert_eq!(Framing::of("text/event-stream; charset=utf-8"), Framing::Sse);
        assert_eq!(Framing::of("application/json; charset=utf-8"), Framing::Json);
        assert_eq!(Framing::of(""), Framing::Json);
    }

    #[test]
    fn whole_json_bodies() {
        let mut s = Scanner::new(Framing::Json);
        s.feed(br#"{"id":"x","choices":[],"usage":{"prompt_tokens":12,"#);
        s.feed(br#""completion_tokens":8,"total_tokens":20}}"#);
        assert_eq!(s.finish(), Some(Usage { prompt_tokens: 12, completion_tokens: 8 }));
        let mut s = Scanner::new(Framing::Json);
        s.feed(br#"{"error":{"message":"no"}}"#);
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn streams_split_anywhere() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\
                      data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3}}\n\n\
                      data: [DONE]\n\n";
        for cut in 0..stream.len() {
            let mut s = Scanner::new(Framing::Sse);
            s.feed(&stream.as_bytes()[..cut]);
            s.feed(&stream.as_bytes()[cut..]);
            assert_eq!(s.finish(), Some(Usage { prompt_tokens: 5, completion_tokens: 3 }), "cut at {cut}");
        }
        let mut s = Scanner::new(Framing::Sse);
        s.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n");
        s.feed(b"data: {\"choices\":[{\"text\":\" there\"}]}\n\n");
        assert_eq!(s.delivered_tokens(), 2, "two events of text delivered");
        assert_eq!(s.finish(), None, "a stream cut before its usage reports none");
        let mut s = Scanner::new(Framing::Json);
        s.feed(br#"{"choices":[{"message":{"content":"abcdefgh"#);
        assert_eq!(s.delivered_tokens(), 11);
    }
}
