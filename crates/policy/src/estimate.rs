//! What a request may use, read from its body before it runs: prompt tokens (estimated from
//! its size, on the high side) and output tokens (its max_tokens). Pure.

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Estimate {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Estimate {
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

#[derive(Deserialize, Default)]
struct Shape {
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Tokenizers make about one token per 4 bytes of English; one per 3 bytes of the whole JSON
/// body (keys and quotes included) errs on the high side, as a reservation should.
pub fn prompt_tokens(body_len: usize) -> u64 {
    (body_len as u64).div_ceil(3) + 8
}

pub struct Prepared {
    pub estimate: Estimate,
    /// The body to send instead, when warden had to set max_tokens or ask for stream usage.
    pub rewritten: Option<Vec<u8>>,
}

/// Reads a request for a model with terms (a price or token pools). Without max_tokens the
/// output is bounded by setting `max_tokens = default_max_tokens`, and a stream is asked to
/// report its usage, so the cost can be reserved up front and settled exactly afterwards.
pub fn prepare(body: &[u8], embeddings: bool, default_max_tokens: u64) -> Prepared {
    let shape: Shape = serde_json::from_slice(body).unwrap_or_default();
    let prompt = prompt_tokens(body.len());
    if embeddings {
        return Prepared { estimate: Estimate { prompt_tokens: prompt, completion_tokens: 0 }, rewritten: None };
    }
    let max = shape.max_completion_tokens.or(shape.max_tokens);
    let need_usage = shape.stream && !shape.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let rewritten = (max.is_none() || need_usage).then(|| {
        let mut doc: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        if let Some(obj) = doc.as_object_mut() {
            if max.is_none() {
                obj.insert("max_tokens".into(), default_max_tokens.into());
            }
            if need_usage {
                let opts = obj.entry("stream_options").or_insert_with(|| Value::Object(Default::default()));
                if let Some(o) = opts.as_object_mut() {
                    o.insert("include_usage".into(), true.into());
                }
            }
        }
        serde_json::to_vec(&doc).unwrap_or_else(|_| body.to_vec())
    });
    let estimate = Estimate { prompt_tokens: prompt, completion_tokens: max.unwrap_or(default_max_tokens) };
    Prepared { estimate, rewritten }
}

/// The same for a request in Ollama's own dialect (passed through to an Ollama server): the
/// output bound is `options.num_predict` (absent or negative: unbounded, so warden sets it),
/// and no stream needs asking for its counts (Ollama's last line always has them).
pub fn prepare_ollama(body: &[u8], embeddings: bool, default_max_tokens: u64) -> Prepared {
    let prompt = prompt_tokens(body.len());
    if embeddings {
        return Prepared { estimate: Estimate { prompt_tokens: prompt, completion_tokens: 0 }, rewritten: None };
    }
    let mut doc: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let max = doc["options"]["num_predict"].as_u64();
    let rewritten = match (max, doc.as_object_mut()) {
        (None, Some(obj)) => {
            let opts = obj.entry("options").or_insert_with(|| Value::Object(Default::default()));
            if !opts.is_object() {
                *opts = Value::Object(Default::default());
            }
            opts["num_predict"] = default_max_tokens.into();
            serde_json::to_vec(&doc).ok()
        }
        _ => None,
    };
    let estimate = Estimate { prompt_tokens: prompt, completion_tokens: max.unwrap_or(default_max_tokens) };
    Prepared { estimate, rewritten }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ollama_requests_are_bounded_by_num_predict() {
        let body = br#"{"model":"m","messages":[],"options":{"num_predict":8,"temperature":0}}"#;
        let p = prepare_ollama(body, false, 100);
        assert_eq!((p.estimate.completion_tokens, p.rewritten.is_none()), (8, true));
        for unbounded in [&br#"{"model":"m","stream":true}"#[..], br#"{"model":"m","options":{"num_predict":-1}}"#] {
            let p = prepare_ollama(unbounded, false, 100);
            assert_eq!(p.estimate.completion_tokens, 100);
            let sent: Value = serde_json::from_slice(&p.rewritten.unwrap()).unwrap();
            assert_eq!(sent["options"]["num_predict"], 100, "bounded as sent");
            assert!(sent.get("stream_options").is_none(), "Ollama reports its counts unasked");
        }
        assert_eq!(prepare_ollama(br#"{"model":"e","input":"x"}"#, true, 100).estimate.completion_tokens, 0);
    }

    #[test]
    fn reads_max_tokens_and_bounds_requests_without_one() {
        let body = br#"{"model":"m","messages":[],"max_tokens":8}"#;
        let p = prepare(body, false, 100);
        assert_eq!(p.estimate, Estimate { prompt_tokens: prompt_tokens(body.len()), completion_tokens: 8 });
        assert!(p.rewritten.is_none());
        let p = prepare(br#"{"model":"m","messages":[]}"#, false, 100);
        assert_eq!(p.estimate.completion_tokens, 100);
        let sent: Value = serde_json::from_slice(&p.rewritten.unwrap()).unwrap();
        assert_eq!(sent["max_tokens"], 100);
        let p = prepare(br#"{"model":"m","max_completion_tokens":5}"#, false, 100);
        assert_eq!((p.estimate.completion_tokens, p.rewritten.is_none()), (5, true));
    }

    #[test]
    fn streams_are_asked_for_usage() {
        let p = prepare(br#"{"model":"m","stream":true,"max_tokens":3}"#, false, 100);
        let sent: Value = serde_json::from_slice(&p.rewritten.unwrap()).unwrap();
        assert_eq!(sent["stream_options"]["include_usage"], true);
        assert_eq!(sent["max_tokens"], 3);
        let p =
            prepare(br#"{"model":"m","stream":true,"max_tokens":3,"stream_options":{"include_usage":true}}"#, false, 1);
        assert!(p.rewritten.is_none());
    }

    #[test]
    fn embeddings_have_no_output() {
        let p = prepare(br#"{"model":"e","input":"hello"}"#, true, 100);
        assert_eq!(p.estimate.completion_tokens, 0);
        assert!(p.rewritten.is_none());
    }
}

/// How a request's answer ended, as settling sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// No answer, or an error status: nothing reached the client worth charging.
    Failed,
    /// The answer reported its usage.
    Reported { prompt_tokens: u64, completion_tokens: u64 },
    /// The service died mid-answer after about this many completion tokens reached the client.
    Cut { delivered_tokens: u64 },
    /// A whole answer without usage (an upstream that does not report it).
    Unreported,
}

/// The tokens a request is charged, and whether they are an estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Not reported by the service: from the reservation or counted from what was delivered.
    pub estimated: bool,
}

/// What to charge for an answer that ended so, given what was reserved. A cut answer pays for
/// its prompt (as estimated) and for what was delivered, never more than reserved and never
/// nothing once tokens reached the client; an answer without usage pays its reservation.
pub fn charge(ending: Ending, reserved: Estimate) -> Charge {
    match ending {
        Ending::Failed => Charge { prompt_tokens: 0, completion_tokens: 0, estimated: false },
        Ending::Reported { prompt_tokens, completion_tokens } => {
            Charge { prompt_tokens, completion_tokens, estimated: false }
        }
        // At most what was reserved, but at least one token once any flowed.
        Ending::Cut { delivered_tokens } => Charge {
            prompt_tokens: reserved.prompt_tokens,
            completion_tokens: delivered_tokens.min(reserved.completion_tokens.max(1)),
            estimated: true,
        },
        Ending::Unreported => Charge {
            prompt_tokens: reserved.prompt_tokens,
            completion_tokens: reserved.completion_tokens,
            estimated: true,
        },
    }
}

/// Completion tokens in `bytes` of answer text, for an answer cut before it said: about one
/// token per 4 bytes.
pub fn tokens_in(bytes: u64) -> u64 {
    bytes.div_ceil(4)
}

#[cfg(test)]
mod charge_tests {
    use super::*;

    const RESERVED: Estimate = Estimate { prompt_tokens: 40, completion_tokens: 100 };

    #[test]
    fn each_ending_is_charged_what_it_delivered() {
        assert_eq!(
            charge(Ending::Failed, RESERVED),
            Charge { prompt_tokens: 0, completion_tokens: 0, estimated: false }
        );
        let reported = Ending::Reported { prompt_tokens: 7, completion_tokens: 9 };
        assert_eq!(charge(reported, RESERVED), Charge { prompt_tokens: 7, completion_tokens: 9, estimated: false });
        assert_eq!(
            charge(Ending::Cut { delivered_tokens: 5 }, RESERVED),
            Charge { prompt_tokens: 40, completion_tokens: 5, estimated: true }
        );
        assert_eq!(
            charge(Ending::Unreported, RESERVED),
            Charge { prompt_tokens: 40, completion_tokens: 100, estimated: true }
        );
    }

    #[test]
    fn a_cut_is_never_more_than_reserved_and_never_nothing_once_tokens_flowed() {
        for delivered in [0, 1, 5, 100, 1000] {
            let c = charge(Ending::Cut { delivered_tokens: delivered }, RESERVED);
            assert!(c.completion_tokens <= RESERVED.completion_tokens);
            assert_eq!(c.completion_tokens == 0, delivered == 0);
            assert_eq!(c.prompt_tokens, RESERVED.prompt_tokens);
        }
        // Even a reservation of 0 output tokens (unpriced models reserve nothing) charges what
        // was seen to flow.
        let none = Estimate::default();
        assert_eq!(charge(Ending::Cut { delivered_tokens: 3 }, none).completion_tokens, 1);
    }
}
