//! Requests that do not decode are the caller's mistake: `INVALID_ARGUMENT`.
//!
//! tonic answers a request body that is not valid protobuf for the method
//! with `INTERNAL`, and one over the size limit with `OUT_OF_RANGE`. Both
//! say "the server is broken" to a client that is in fact at fault, so this
//! layer rewrites exactly those answers (recognized by their messages) to
//! `INVALID_ARGUMENT`, keeping the message. Handlers never see such requests.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::HeaderValue;

/// Wraps a gRPC server's services.
#[derive(Debug, Clone, Copy, Default)]
pub struct DecodeErrorLayer;

impl<S> tower::Layer<S> for DecodeErrorLayer {
    type Service = DecodeErrors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DecodeErrors { inner }
    }
}

#[derive(Debug, Clone)]
pub struct DecodeErrors<S> {
    inner: S,
}

/// `(grpc-status, message prefix)` pairs tonic uses for undecodable requests.
const DECODE_FAILURES: &[(tonic::Code, &str)] = &[
    (tonic::Code::Internal, "failed to decode"),
    (
        tonic::Code::OutOfRange,
        "Error, decoded message length too large",
    ),
    (
        tonic::Code::OutOfRange,
        "Error, encoded message length too large",
    ),
];

/// Whether a status with this code and message is tonic's answer to an
/// undecodable request.
pub fn is_decode_failure(code: tonic::Code, message: &str) -> bool {
    DECODE_FAILURES
        .iter()
        .any(|(c, prefix)| code == *c && message.starts_with(prefix))
}

/// Rewrites the status of a trailers-only response if it is a decode failure.
pub fn rewrite(headers: &mut http::HeaderMap) {
    let status = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from);
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(|m| m.replace("%20", " "))
        .unwrap_or_default();
    if status.is_some_and(|code| is_decode_failure(code, &message)) {
        headers.insert("grpc-status", HeaderValue::from_static("3"));
    }
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for DecodeErrors<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            rewrite(response.headers_mut());
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(status: &'static str, message: &'static str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static(status));
        h.insert("grpc-message", HeaderValue::from_static(message));
        h
    }

    #[test]
    fn only_decode_failures_become_invalid_argument() {
        let mut h = headers("13", "failed%20to%20decode%20Protobuf%20message");
        rewrite(&mut h);
        assert_eq!(h["grpc-status"], "3");
        let mut h = headers(
            "11",
            "Error, decoded message length too large: found 5 bytes",
        );
        rewrite(&mut h);
        assert_eq!(h["grpc-status"], "3");
        let mut h = headers("13", "raft: storage failed");
        rewrite(&mut h);
        assert_eq!(h["grpc-status"], "13", "a real internal error stays one");
    }
}
