//! How the gateway reaches upstream MCP servers: the Streamable HTTP hop (`hop`), how it sends
//! (`send`: credentials, traffic policy, attempts) and what it reads of answers (`reply`),
//! which era each upstream speaks and the sessions the gateway holds for stateless clients
//! (`era`), and the bridge to upstreams that speak only the 2024-11-05 HTTP+SSE transport (`sse_bridge`).

pub mod era;
pub mod hop;
pub mod reply;
mod send;
pub mod sse_bridge;
