//! Requests to an OAuth 2 token endpoint (RFC 6749 section 3.2), for every grant the gateway
//! uses as a client, and to the endpoints beside it (revocation, RFC 7009; dynamic client
//! registration, RFC 7591): the form, the client's authentication (HTTP Basic for a confidential
//! client, `client_id` in the form for a public one), and the JSON answer read within a size
//! and time bound. Errors name the endpoint's `error` and `error_description`, never a
//! secret the request carried.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Limited};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::error::full;
use crate::upstream::HttpClient;

/// Largest token response read.
const MAX_RESPONSE: usize = 256 * 1024;
/// How long an endpoint may take to answer.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Who the gateway is at the authorization server.
#[derive(Clone, Copy)]
pub struct Client<'a> {
    /// The client id.
    pub id: &'a str,
    /// The secret of a confidential client.
    pub secret: Option<&'a SecretString>,
    /// How a confidential client presents its secret.
    pub method: AuthMethod,
}

/// How a confidential client authenticates (RFC 6749 section 2.3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthMethod {
    /// HTTP Basic (`client_secret_basic`), which every server must support.
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form (`client_secret_post`).
    Post,
}

/// Why a token request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// No answer: unreachable, broken off or too slow.
    #[error("{0}")]
    Unreachable(String),
    /// The endpoint answered with an OAuth error (or something that is not a token answer).
    #[error("it answered HTTP {status}: {error}{}", if description.is_empty() { String::new() } else { format!(" ({description})") })]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The OAuth `error` code, e.g. `invalid_grant`.
        error: String,
        /// The `error_description`, if any.
        description: String,
    },
}

impl TokenError {
    /// Whether the grant itself was refused (`invalid_grant`): a refresh token that expired
    /// or was revoked, a code used twice. The person must authorize again.
    pub fn is_invalid_grant(&self) -> bool {
        matches!(self, Self::Refused { error, .. } if error == "invalid_grant")
    }

    /// Whether the server did not accept how the client authenticated (`invalid_client`).
    pub fn is_invalid_client(&self) -> bool {
        matches!(self, Self::Refused { error, .. } if error == "invalid_client")
    }
}

/// [`request`] as a confidential client that presents its secret the way the server takes
/// it: HTTP Basic, and in the form if the server refuses that as `invalid_client` (servers
/// may register a client for one method only). Returns the method that worked with the
/// answer, so the caller can start with it next time.
pub async fn request_adapting(
    http: &HttpClient,
    endpoint: &str,
    client: Client<'_>,
    form: &[(&str, &str)],
) -> Result<(Value, AuthMethod), TokenError> {
    match request(http, endpoint, client, form).await {
        Err(error) if error.is_invalid_client() && client.secret.is_some() => {
            let other = match client.method {
                AuthMethod::Basic => AuthMethod::Post,
                AuthMethod::Post => AuthMethod::Basic,
            };
            let client = Client {
                method: other,
                ..client
            };
            // The first refusal is the one to report if both fail.
            let answer = request(http, endpoint, client, form)
                .await
                .map_err(|_| error)?;
            Ok((answer, other))
        }
        other => other.map(|answer| (answer, client.method)),
    }
}

/// POSTs `form` to `endpoint` as `client` and returns the JSON object it answered with (a
/// 2xx answer); `Err` says what the endpoint said instead.
pub async fn request(
    http: &HttpClient,
    endpoint: &str,
    client: Client<'_>,
    form: &[(&str, &str)],
) -> Result<Value, TokenError> {
    let request = form_request(endpoint, client, form)?;
    json_answer(send(http, endpoint, request).await?)
}

/// Revokes `token` at `endpoint` (RFC 7009) as `client`; `hint` is `refresh_token` or
/// `access_token`. A token the server does not know counts as revoked (it answers 200).
pub async fn revoke(
    http: &HttpClient,
    endpoint: &str,
    client: Client<'_>,
    token: &str,
    hint: &str,
) -> Result<(), TokenError> {
    let form = [("token", token), ("token_type_hint", hint)];
    let request = form_request(endpoint, client, &form)?;
    let (status, body) = send(http, endpoint, request).await?;
    if status.is_success() {
        return Ok(());
    }
    json_answer((status, body)).map(|_| ())
}

/// POSTs the JSON `document` to `endpoint` (as for dynamic client registration, RFC 7591)
/// and returns the JSON object it answered with.
pub async fn post_json(
    http: &HttpClient,
    endpoint: &str,
    document: &Value,
) -> Result<Value, TokenError> {
    let request = Request::post(endpoint)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json")
        .body(full(Bytes::from(document.to_string())))
        .map_err(|e| TokenError::Unreachable(format!("{endpoint} is not a valid URL: {e}")))?;
    json_answer(send(http, endpoint, request).await?)
}

/// The form POST of `client` to `endpoint`, authenticated as the client's method says.
fn form_request(
    endpoint: &str,
    client: Client<'_>,
    form: &[(&str, &str)],
) -> Result<Request<crate::error::Body>, TokenError> {
    let body = {
        let mut serializer = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in form {
            serializer.append_pair(name, value);
        }
        match (client.secret, client.method) {
            (None, _) => {
                serializer.append_pair("client_id", client.id);
            }
            (Some(secret), AuthMethod::Post) => {
                serializer.append_pair("client_id", client.id);
                serializer.append_pair("client_secret", secret.expose_secret());
            }
            (Some(_), AuthMethod::Basic) => {}
        }
        serializer.finish()
    };
    let mut request = Request::post(endpoint)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json");
    if let (Some(secret), AuthMethod::Basic) = (client.secret, client.method) {
        // RFC 6749 section 2.3.1: both parts form-encoded before Basic encoding.
        let encode =
            |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let basic = STANDARD.encode(format!(
            "{}:{}",
            encode(client.id),
            encode(secret.expose_secret())
        ));
        let mut value = http::HeaderValue::try_from(format!("Basic {basic}"))
            .map_err(|_| TokenError::Unreachable("the client id is not a valid header".into()))?;
        value.set_sensitive(true);
        request = request.header(header::AUTHORIZATION, value);
    }
    request
        .body(full(Bytes::from(body)))
        .map_err(|e| TokenError::Unreachable(format!("{endpoint} is not a valid URL: {e}")))
}

/// Sends `request` and reads the answer, within [`MAX_RESPONSE`] bytes and [`TIMEOUT`].
async fn send(
    http: &HttpClient,
    endpoint: &str,
    request: Request<crate::error::Body>,
) -> Result<(http::StatusCode, Bytes), TokenError> {
    let exchange = async {
        let response = http
            .request(request)
            .await
            .map_err(|e| TokenError::Unreachable(format!("{endpoint} is unreachable: {e}")))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| TokenError::Unreachable(format!("reading {endpoint}'s answer: {e}")))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(TokenError::Unreachable(format!(
                "{endpoint} did not answer within {} s",
                TIMEOUT.as_secs()
            )))
        })
}

/// The JSON object of a 2xx answer, or the OAuth error it carries.
fn json_answer((status, body): (http::StatusCode, Bytes)) -> Result<Value, TokenError> {
    let answer: Value = serde_json::from_slice(&body).unwrap_or_default();
    if status.is_success() && answer.is_object() {
        return Ok(answer);
    }
    let text = |key: &str| {
        answer[key]
            .as_str()
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect::<String>()
    };
    let error = text("error");
    Err(TokenError::Refused {
        status: status.as_u16(),
        error: if error.is_empty() {
            "no OAuth error in the answer".into()
        } else {
            error
        },
        description: text("error_description"),
    })
}

/// An access token from a token answer, and how long it lives (`expires_in`, when given).
pub fn access_token(answer: &Value) -> Result<(SecretString, Option<Duration>), TokenError> {
    let token = answer["access_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| TokenError::Refused {
            status: 200,
            error: "no access_token in the answer".into(),
            description: String::new(),
        })?;
    let lifetime = answer["expires_in"]
        .as_u64()
        .or_else(|| answer["expires_in"].as_str()?.parse().ok())
        .map(Duration::from_secs);
    Ok((SecretString::from(token.to_owned()), lifetime))
}
