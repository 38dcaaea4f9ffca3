//! The path and query extractors every route uses: axum's, with what does not fit refused in
//! the JSON error shape (axum's own rejections are plain text), naming the parameter.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::base::errors::ApiError;

/// A request's query string, deserialized; 400 `bad_request` when it does not fit `T`.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::try_from_uri(&parts.uri) {
            Ok(axum::extract::Query(q)) => Ok(Query(q)),
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// The route's path parameters; 400 `bad_request` when they do not fit `T` (a name that is
/// not UTF-8 once percent-decoded).
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(p)) => Ok(Path(p)),
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}
