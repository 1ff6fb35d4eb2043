//! mcpgate-proxy: configuration in, MCP traffic out. It loads the operator's rendered
//! configuration, swaps it atomically, and forwards each route's MCP traffic upstream with
//! that route's credentials.

pub mod audit;
pub mod auth;
pub mod census;
pub mod error;
pub mod guard;
pub mod listener;
pub mod mcp;
pub mod metrics;
pub mod outbound;
pub mod path;
pub mod request_id;
pub mod server;
pub mod session;
pub mod signin;
pub mod source;
pub mod tls;
pub mod token_endpoint;
pub mod traffic;
pub mod upstream;
