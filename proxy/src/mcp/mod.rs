//! MCP traffic. Single-server routes forward verbatim (`forward`); aggregation of virtual
//! servers, gateway-terminated sessions and relays build on the same pieces.

pub mod filter;
pub mod forward;
