//! Stage 2: the model a request body names, found without building the whole document.

use std::borrow::Cow;

use serde::Deserialize;

use crate::base::errors::ApiError;

/// The body's `model` string. 400 when the body is not a JSON object with one.
pub fn model_of(body: &[u8]) -> Result<Cow<'_, str>, ApiError> {
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
}
