//! Telling a client that the user must authorize an upstream first, in the form it
//! understands:
//! - every client: HTTP 401 with the `McpAuthRequiredError` body agents written against the
//!   product we replace read (`authorization_urls`, `server_names`, `message`), and no
//!   `WWW-Authenticate`, because the caller's token for the gateway is fine;
//! - a 2025-11-25 client that declared `elicitation.url`: JSON-RPC error `-32042`
//!   (URLElicitationRequiredError) with one URL elicitation per server, whose
//!   `elicitationId` the gateway names again in `notifications/elicitation/complete` once
//!   the user has connected;
//! - a 2026-07-28 client that declared it: an `input_required` result whose input requests
//!   are URL elicitations; the client retries the call once the user is done.

use http::StatusCode;
use serde_json::{Map, Value, json};

use crate::error::{Body, code, json_response};
use crate::outbound::OutboundError;

/// The client capability key of the stateless revision's `_meta`.
const CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
/// Requests an `input_required` result may answer.
const INTERACTIVE: [&str; 3] = ["tools/call", "prompts/get", "resources/read"];

/// How to ask one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asking {
    /// HTTP 401 `McpAuthRequiredError`.
    Body,
    /// JSON-RPC error -32042 with URL elicitations (2025-11-25).
    UrlError,
    /// An `input_required` result with URL elicitations (2026-07-28).
    InputRequired,
}

impl Asking {
    /// For a request of `method` in an initialize-era session whose client declared
    /// `capabilities`.
    pub fn in_session(method: &str, capabilities: &Value) -> Self {
        match method != "initialize" && declares_url(capabilities) {
            true => Self::UrlError,
            false => Self::Body,
        }
    }

    /// For a stateless request of `method` whose `_meta` (`meta`) declares the client's
    /// capabilities.
    pub fn stateless(method: &str, meta: &Value) -> Self {
        let capabilities = &meta[CLIENT_CAPABILITIES];
        match INTERACTIVE.contains(&method) && declares_url(capabilities) {
            true => Self::InputRequired,
            false => Self::Body,
        }
    }
}

fn declares_url(capabilities: &Value) -> bool {
    capabilities["elicitation"].get("url").is_some()
}

/// The answer to request `id` when the user must first supply what `needs` name (each an
/// [`OutboundError::AuthorizationRequired`]; others are ignored).
pub fn answer(
    asking: Asking,
    id: Option<&Value>,
    needs: &[&OutboundError],
) -> http::Response<Body> {
    let needs: Vec<Need<'_>> = needs.iter().filter_map(|n| Need::of(n)).collect();
    let message = needs
        .iter()
        .map(|n| n.error.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    let id = id.cloned().unwrap_or(Value::Null);
    match asking {
        Asking::Body => {
            let mut urls = Map::new();
            let mut names = Map::new();
            for need in &needs {
                urls.insert(need.server.into(), Value::String(need.url.into()));
                names.insert(
                    need.server.into(),
                    Value::String(format!("{}/{}", need.namespace, need.server)),
                );
            }
            json_response(
                StatusCode::UNAUTHORIZED,
                &json!({
                    "jsonrpc": "2.0",
                    "id": id,
                    "error": {
                        "type": "McpAuthRequiredError",
                        "code": code::AUTHORIZATION_REQUIRED,
                        "message": message,
                        "data": {"authorization_urls": urls},
                    },
                    "message": message,
                    "authorization_urls": urls,
                    "server_names": names,
                }),
            )
        }
        Asking::UrlError => {
            let elicitations: Vec<Value> = needs
                .iter()
                .map(|n| {
                    json!({"mode": "url", "message": n.error.to_string(), "url": n.url,
                        "elicitationId": n.elicitation})
                })
                .collect();
            json_response(
                StatusCode::OK,
                &json!({"jsonrpc": "2.0", "id": id, "error": {
                    "code": code::URL_ELICITATION_REQUIRED,
                    "message": message,
                    "data": {"elicitations": elicitations},
                }}),
            )
        }
        Asking::InputRequired => {
            let requests: Map<String, Value> = needs
                .iter()
                .map(|n| {
                    (
                        n.server.to_owned(),
                        json!({"method": "elicitation/create", "params": {
                            "mode": "url", "message": n.error.to_string(), "url": n.url}}),
                    )
                })
                .collect();
            json_response(
                StatusCode::OK,
                &json!({"jsonrpc": "2.0", "id": id, "result": {
                    "resultType": "input_required",
                    "inputRequests": requests,
                }}),
            )
        }
    }
}

/// The parts of one [`OutboundError::AuthorizationRequired`].
struct Need<'a> {
    error: &'a OutboundError,
    namespace: &'a str,
    server: &'a str,
    url: &'a str,
    elicitation: &'a str,
}

impl<'a> Need<'a> {
    fn of(error: &'a OutboundError) -> Option<Self> {
        match error {
            OutboundError::AuthorizationRequired {
                namespace,
                server,
                url,
                elicitation,
                ..
            } => Some(Self {
                error,
                namespace,
                server,
                url,
                elicitation,
            }),
            _ => None,
        }
    }
}

/// `notifications/elicitation/complete` for `elicitation`.
pub fn complete(elicitation: &str) -> Value {
    json!({"jsonrpc": "2.0", "method": "notifications/elicitation/complete",
        "params": {"elicitationId": elicitation}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn need(server: &str) -> OutboundError {
        OutboundError::AuthorizationRequired {
            namespace: "team".into(),
            server: server.into(),
            what: "authorization (OAuth)",
            url: format!("https://gw.example/-/connections/team/{server}"),
            elicitation: format!("owner-{server}"),
        }
    }

    async fn body(response: http::Response<Body>) -> (StatusCode, Value) {
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[test]
    fn clients_are_asked_the_way_they_declared() {
        let url = json!({"elicitation": {"url": {}}});
        let form = json!({"elicitation": {"form": {}}});
        assert_eq!(Asking::in_session("tools/call", &url), Asking::UrlError);
        assert_eq!(Asking::in_session("tools/call", &form), Asking::Body);
        assert_eq!(Asking::in_session("initialize", &url), Asking::Body);
        let meta = |capabilities: &Value| json!({CLIENT_CAPABILITIES: capabilities});
        assert_eq!(
            Asking::stateless("tools/call", &meta(&url)),
            Asking::InputRequired
        );
        assert_eq!(Asking::stateless("tools/list", &meta(&url)), Asking::Body);
        assert_eq!(
            Asking::stateless("tools/call", &meta(&json!({}))),
            Asking::Body
        );
    }

    #[tokio::test]
    async fn every_form_names_every_server_and_its_url() {
        let (a, b) = (need("github"), need("linear"));
        let needs = [&a, &b];
        let (status, body_401) = body(answer(Asking::Body, Some(&json!(7)), &needs)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body_401["error"]["type"], "McpAuthRequiredError");
        assert_eq!(
            body_401["authorization_urls"]["linear"],
            "https://gw.example/-/connections/team/linear"
        );
        assert_eq!(body_401["server_names"]["github"], "team/github");
        assert_eq!(body_401["id"], 7);

        let (status, error) = body(answer(Asking::UrlError, Some(&json!(7)), &needs)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(error["error"]["code"], -32042);
        let elicitations = error["error"]["data"]["elicitations"].as_array().unwrap();
        assert_eq!(elicitations.len(), 2);
        assert_eq!(elicitations[1]["mode"], "url");
        assert_eq!(elicitations[1]["elicitationId"], "owner-linear");
        assert_eq!(
            elicitations[0]["url"],
            "https://gw.example/-/connections/team/github"
        );

        let (status, result) = body(answer(Asking::InputRequired, Some(&json!(7)), &needs)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(result["result"]["resultType"], "input_required");
        let request = &result["result"]["inputRequests"]["github"];
        assert_eq!(request["method"], "elicitation/create");
        assert_eq!(request["params"]["mode"], "url");
        assert!(request["params"].get("elicitationId").is_none());
    }
}
