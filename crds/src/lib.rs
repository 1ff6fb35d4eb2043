//! mcpgate's API: the four `mcpgate.dev/v1alpha1` kinds platform teams write, the gateway
//! configuration the operator renders from them for the proxy (and how it is packed into
//! ConfigMaps), and the names both share. Pure data: no I/O.

// kube's `printcolumn(type_ = "string", ...)` repeats argument names across columns, which
// clippy mistakes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod config_parts;
pub mod discovered;
pub mod gateway_config;
pub mod names;
pub mod v1alpha1;

pub use gateway_config::GatewayConfig;
