//! mcpgate-operator: Kubernetes resources in, gateway configuration out. `render` is pure;
//! everything else turns its output into API writes (or files, standalone).

pub mod apply;
pub mod bootstrap;
pub mod controller;
pub mod error;
pub mod http;
pub mod metrics;
pub mod rbac;
pub mod reasons;
pub mod render;
pub mod standalone;
pub mod status;
pub mod watch;
