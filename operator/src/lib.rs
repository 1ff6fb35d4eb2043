//! mcpgate-operator: Kubernetes resources in, gateway configuration out. `render` is pure;
//! everything else turns its output into API writes (or files, standalone).

pub mod reasons;
pub mod render;
