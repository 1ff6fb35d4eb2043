//! MCP traffic. Both kinds of route share one context (`shared`): single-server routes
//! forward verbatim (`server_route`); virtual servers aggregate their members
//! (`virtual_server`); both reach upstreams through `upstream`.

pub mod asking;
pub mod extra_headers;
pub mod filter;
pub mod last_listed;
pub mod message;
#[cfg(test)]
pub(crate) mod proptests;
pub mod relay;
pub mod server_route;
pub mod shared;
pub mod sse;
pub mod upstream;
pub mod virtual_server;
