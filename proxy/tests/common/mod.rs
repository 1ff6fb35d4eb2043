//! Shared by the proxy test binaries: a test identity provider and the proxy as a process.

pub mod gateway;
pub mod idp;
