//! MCP traffic. Single-server routes forward verbatim (`forward`); virtual servers aggregate
//! their members (`aggregate`); both reach upstreams through `hop`.

pub mod asking;
pub mod era;
pub mod extra_headers;
pub mod filter;
pub mod forward;
pub mod hop;
pub mod message;
#[cfg(test)]
pub(crate) mod proptests;
pub mod relay;
pub mod sse;
pub mod virtual_server;
