//! Finds the `usage` an OpenAI-compatible answer reports, in a whole JSON body or in the
//! server-sent events of a stream, as the bytes pass through. Pure and bounded: at most
//! `LIMIT` bytes are kept.

use serde::Deserialize;

const LIMIT: usize = 4 << 20;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

#[derive(Deserialize)]
struct WithUsage {
    usage: Option<Usage>,
}

pub struct Scanner {
    sse: bool,
    /// JSON: the body so far. SSE: the current unfinished line.
    buf: Vec<u8>,
    overflow: bool,
    found: Option<Usage>,
    /// SSE: events that carried generated text (about one token each), for an answer cut
    /// before its usage.
    text_events: u64,
    /// Bytes seen, for a JSON answer cut before its end.
    bytes: u64,
}

impl Scanner {
    pub fn new(sse: bool) -> Self {
        Scanner { sse, buf: Vec::new(), overflow: false, found: None, text_events: 0, bytes: 0 }
    }

    /// About how many completion tokens reached the client so far: one per text event of a
    /// stream (servers send a token or a few per event), or from the size of a JSON body.
    pub fn delivered_tokens(&self) -> u64 {
        if self.sse {
            self.text_events
        } else {
            policy::estimate::tokens_in(self.bytes)
        }
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        self.bytes += data.len() as u64;
        if !self.sse {
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
        let Some(payload) = line.strip_prefix(b"data:") else { return };
        if memchr(payload, b"\"content\"") || memchr(payload, b"\"text\"") {
            self.text_events += 1;
        }
        // Only chunks that mention usage are parsed: most carry one token.
        if memchr(payload, b"\"usage\"") {
            if let Ok(WithUsage { usage: Some(u) }) = serde_json::from_slice(payload.trim_ascii()) {
                self.found = Some(u);
            }
        }
    }

    /// The usage reported, if the answer had one.
    pub fn finish(mut self) -> Option<Usage> {
        if self.sse {
            let rest = std::mem::take(&mut self.buf);
            self.line(&rest);
            return self.found;
        }
        if self.overflow {
            return None;
        }
        serde_json::from_slice::<WithUsage>(&self.buf).ok().and_then(|w| w.usage)
    }
}

fn memchr(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_json_bodies() {
        let mut s = Scanner::new(false);
        s.feed(br#"{"id":"x","choices":[],"usage":{"prompt_tokens":12,"#);
        s.feed(br#""completion_tokens":8,"total_tokens":20}}"#);
        assert_eq!(s.finish(), Some(Usage { prompt_tokens: 12, completion_tokens: 8 }));
        let mut s = Scanner::new(false);
        s.feed(br#"{"error":{"message":"no"}}"#);
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn streams_split_anywhere() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\
                      data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3}}\n\n\
                      data: [DONE]\n\n";
        for cut in 0..stream.len() {
            let mut s = Scanner::new(true);
            s.feed(&stream.as_bytes()[..cut]);
            s.feed(&stream.as_bytes()[cut..]);
            assert_eq!(s.finish(), Some(Usage { prompt_tokens: 5, completion_tokens: 3 }), "cut at {cut}");
        }
        let mut s = Scanner::new(true);
        s.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n");
        s.feed(b"data: {\"choices\":[{\"text\":\" there\"}]}\n\n");
        assert_eq!(s.delivered_tokens(), 2, "two events of text delivered");
        assert_eq!(s.finish(), None, "a stream cut before its usage reports none");
        let mut s = Scanner::new(false);
        s.feed(br#"{"choices":[{"message":{"content":"abcdefgh"#);
        assert_eq!(s.delivered_tokens(), 11);
    }
}
