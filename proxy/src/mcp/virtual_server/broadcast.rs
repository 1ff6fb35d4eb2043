//! What every member gets (`logging/setLevel`, client notifications), and the client's
//! answers to requests members sent it.

use bytes::Bytes;
use futures::future::join_all;
use http::{Method, Response, StatusCode};
use serde_json::{Value, json};

use super::*;
use crate::error::{Body, ProxyError, json_response};
use crate::mcp::shared::Message;

impl Ctx<'_> {
    /// A request every member gets (`logging/setLevel`); answered once all have.
    pub(super) async fn broadcast_request(
        &self,
        message: &Message,
        request: &Value,
    ) -> Response<Body> {
        let results =
            join_all(self.route.members.iter().map(|member| async move {
                self.call(&self.hop(member, self.caller), request).await
            }))
            .await;
        for error in results.iter().filter_map(|r| r.as_ref().err()) {
            tracing::warn!(%error, "{} failed on a member", message.envelope.method());
        }
        json_response(
            StatusCode::OK,
            &json!({"jsonrpc": "2.0", "id": message.envelope.id, "result": {}}),
        )
    }

    pub(super) async fn notification(&self, message: &Message) -> Response<Body> {
        if matches!(self.via, Via::Stateless { .. }) {
            // Stateless clients cancel by closing the stream; nothing to pass on.
            return accepted();
        }
        if message.envelope.method() != "notifications/initialized" {
            join_all(self.route.members.iter().map(|member| async move {
                let hop = self.hop(member, self.caller);
                if let Err(error) = self.send(&hop, &Method::POST, message.bytes.clone()).await {
                    tracing::warn!(%error, "a notification did not reach a member");
                }
            }))
            .await;
        }
        accepted()
    }

    /// The client's answer to an upstream's request: back to that upstream, original id.
    pub(super) async fn answer(
        &self,
        message: &Message,
        mut response: Value,
    ) -> Result<Response<Body>, ProxyError> {
        let target = message
            .envelope
            .id
            .as_ref()
            .and_then(Value::as_str)
            .and_then(|id| id.strip_prefix(RELAY_ID))
            .and_then(|rest| rest.split_once(':'))
            .and_then(|(server, original)| {
                Some((
                    self.route.member(server)?,
                    serde_json::from_str::<Value>(original).ok()?,
                ))
            });
        let Some((member, original)) = target else {
            return Err(ProxyError::BadRequest {
                id: None,
                message: "a response to a request this session never sent".into(),
            });
        };
        if let Some(fields) = response.as_object_mut() {
            fields.insert("id".into(), original);
        }
        let hop = self.hop(member, self.caller);
        match self
            .send(&hop, &Method::POST, Bytes::from(response.to_string()))
            .await
        {
            Ok(_) => Ok(accepted()),
            Err(error) => Err(ProxyError::Upstream { id: None, error }),
        }
    }
}
