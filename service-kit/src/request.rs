//! Reading what every request carries: tenant names, and a JSON body with errors that
//! name the offending field.

use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::de::DeserializeOwned;

use crate::problem::{Problem, from_rejection};

/// Header naming another tenant a platform admin acts in (ADR 27).
pub const TENANT_HEADER: &str = "x-tenant-id";

/// Whether `name` is a valid tenant name: 1-64 ASCII letters, digits, `_`, `-` or `.`.
pub fn is_tenant_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// `tenant` if it is a valid tenant name, else a 400 problem naming where it came from
/// (`kind` is `header`, `parameter` or `field`; `name` its name).
pub fn valid_tenant(
    tenant: &str,
    kind: &'static str,
    name: &'static str,
) -> Result<String, Problem> {
    let tenant = tenant.trim();
    if is_tenant_name(tenant) {
        Ok(tenant.to_owned())
    } else {
        Err(Problem::new(
            StatusCode::BAD_REQUEST,
            &format!("invalid-{kind}"),
            &format!("Invalid {kind}"),
            format!("{name} must be 1-64 ASCII letters, digits, '_', '-' or '.'"),
        )
        .with(kind, name))
    }
}

/// Whether `content_type` names JSON: `application/json` or `application/<name>+json`,
/// parameters (`; charset=utf-8`) allowed.
fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|subtype| subtype.ends_with("+json"))
}

/// Middleware of the JSON APIs: a request that carries a body must say it is JSON, else
/// 415 naming `Content-Type`. Besides the clear error, it keeps plain HTML forms (which can
/// only post `text/plain`, `multipart/form-data` or `application/x-www-form-urlencoded`)
/// from reaching a command. Requests without a body (`curl -X POST`) pass.
pub async fn require_json_bodies(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::header;
    let headers = request.headers();
    let declared_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    let has_body = declared_length.is_some_and(|length| length > 0)
        || (declared_length.is_none() && headers.contains_key(header::TRANSFER_ENCODING));
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(is_json_media_type);
    if has_body && !json {
        return Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "the body must be JSON: send Content-Type: application/json",
        )
        .with("header", "Content-Type")
        .into_response();
    }
    next.run(request).await
}

/// The request body, or the problem explaining why it could not be read (413 when over
/// the configured limit).
pub fn body_bytes(body: Result<bytes::Bytes, BytesRejection>) -> Result<bytes::Bytes, Problem> {
    body.map_err(|rejection| {
        let response = rejection.into_response();
        from_rejection(response.status(), "could not read the request body".into())
    })
}

/// Longest parser message an answer quotes, in characters.
const MAX_MESSAGE_CHARS: usize = 300;

/// Parses a JSON body. Syntax errors are 400; well-formed JSON of the wrong shape is 422
/// with the path of the field (`steps[0].kind`). An empty body reads as `null` when `T`
/// accepts it.
pub fn json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"null"
    } else {
        body
    };
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(value) => {
            if let Err(error) = deserializer.end() {
                return Err(Problem::bad_request(format!("malformed JSON: {error}")));
            }
            Ok(value)
        }
        Err(error) => {
            let path = error.path().to_string();
            let inner = error.into_inner();
            if inner.is_data() {
                let field = if path == "." { String::new() } else { path };
                // serde's messages quote the refused value whole: keep an answer small.
                let message: String = inner.to_string().chars().take(MAX_MESSAGE_CHARS).collect();
                Err(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "validation",
                    "Invalid request",
                    format!("{field}: {message}"),
                )
                .with_errors([serde_json::json!({"field": field, "message": message})]))
            } else {
                Err(Problem::bad_request(format!("malformed JSON: {inner}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_json_media_type;

    #[test]
    fn json_media_types_are_told_from_the_others() {
        for json in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
        ] {
            assert!(is_json_media_type(json), "{json}");
        }
        for other in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonp",
            "",
        ] {
            assert!(!is_json_media_type(other), "{other}");
        }
    }
}
