//! Part of stage 8 (`forward`): the rate limits a hosted API announces in its answer's headers
//! (OpenAI's `x-ratelimit-*` and `retry-after`, which Groq, Together, OpenRouter and others
//! copy), read for the pools in front of it.

use std::time::{Duration, SystemTime};

use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderMap, StatusCode};

use crate::admission::gate::UpstreamLimits;
use policy::bucket::Announced;

/// How long a 429 that says nothing of when to come back pauses the pools.
const DEFAULT_PAUSE: Duration = Duration::from_secs(1);

/// The limits an answer announces; empty when it announces none.
pub fn read(status: StatusCode, headers: &HeaderMap) -> UpstreamLimits {
    // Most answers (every local server's) announce nothing: one pass over the names says so,
    // where the lookups below hash each of six names.
    let announces = |name: &axum::http::HeaderName| name.as_str().starts_with("x-ratelimit-") || name == RETRY_AFTER;
    if status != StatusCode::TOO_MANY_REQUESTS && !headers.keys().any(announces) {
        return UpstreamLimits::default();
    }
    let requests = announced(
        headers,
        ["x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"],
    );
    let tokens =
        announced(headers, ["x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"]);
    let refused_for_ms = (status == StatusCode::TOO_MANY_REQUESTS).then(|| {
        // retry-after is the upstream's own word; else the reset of what ran out; else the
        // later reset of the two; else a second.
        let exhausted = [requests, tokens].into_iter().filter(|a| a.remaining == Some(0)).filter_map(|a| a.reset_ms);
        let any_reset = [requests, tokens].into_iter().filter_map(|a| a.reset_ms);
        retry_after_ms(headers)
            .or_else(|| exhausted.max())
            .or_else(|| any_reset.max())
            .unwrap_or(DEFAULT_PAUSE.as_millis() as u64)
    });
    UpstreamLimits { requests, tokens, refused_for_ms }
}

/// `[limit, remaining, reset]` header names of one unit (static: this runs on every answer).
fn announced(headers: &HeaderMap, [limit, remaining, reset]: [&'static str; 3]) -> Announced {
    let text = |name: &'static str| headers.get(name).and_then(|v| v.to_str().ok());
    let number = |name| text(name).and_then(|t| t.trim().parse::<u64>().ok());
    Announced { limit: number(limit), remaining: number(remaining), reset_ms: text(reset).and_then(duration_ms) }
}

/// `retry-after`: seconds, or an HTTP date.
fn retry_after_ms(headers: &HeaderMap) -> Option<u64> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = text.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| (secs * 1000.0).ceil() as u64);
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default().as_millis() as u64)
}

/// A reset as hosted APIs write it: Go-style durations ("1s", "6m0s", "20ms", "1h2m3.5s") or
/// bare seconds ("60", "0.5").
fn duration_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| (secs * 1000.0).ceil() as u64);
    }
    if text.is_empty() {
        return None;
    }
    let (mut total, mut rest) = (0f64, text);
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).filter(|&i| i > 0)?;
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let ms_per = match &rest[..unit_len] {
            "h" => 3_600_000.0,
            "m" => 60_000.0,
            "s" => 1_000.0,
            "ms" => 1.0,
            "us" | "µs" => 0.001,
            "ns" => 0.000_001,
            _ => return None,
        };
        total += value * ms_per;
        rest = &rest[unit_len..];
    }
    Some(total.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_are_read_as_hosted_apis_write_them() {
        for (text, ms) in [("1s", 1_000), ("6m0s", 360_000), ("20ms", 20), ("1h2m3.5s", 3_723_500), ("60", 60_000)] {
            assert_eq!(duration_ms(text), Some(ms), "{text}");
        }
        for bad in ["", "s", "1x", "-1", "1s2", "NaN"] {
            assert_eq!(duration_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_429_pauses_for_retry_after_else_the_reset_of_what_ran_out() {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-limit-requests", "60".parse().unwrap());
        h.insert("x-ratelimit-remaining-requests", "0".parse().unwrap());
        h.insert("x-ratelimit-reset-requests", "2s".parse().unwrap());
        h.insert("x-ratelimit-remaining-tokens", "900".parse().unwrap());
        h.insert("x-ratelimit-reset-tokens", "30s".parse().unwrap());
        let said = read(StatusCode::OK, &h);
        assert_eq!(said.requests, Announced { limit: Some(60), remaining: Some(0), reset_ms: Some(2_000) });
        assert_eq!(said.tokens.remaining, Some(900));
        assert_eq!(said.refused_for_ms, None, "only a 429 is a refusal");
        assert_eq!(read(StatusCode::TOO_MANY_REQUESTS, &h).refused_for_ms, Some(2_000));
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(read(StatusCode::TOO_MANY_REQUESTS, &h).refused_for_ms, Some(7_000));
        let bare = read(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new());
        assert_eq!(bare.refused_for_ms, Some(1_000));
        assert!(read(StatusCode::OK, &HeaderMap::new()).is_empty());
    }
}
