//! `mcpgate-proxy`: the MCP gateway agents and IDEs talk to. It serves the configuration the
//! operator renders; the serving side is being built (see README).

fn main() {
    eprintln!("mcpgate-proxy: the gateway is not part of this build yet; run `mcpgate-operator standalone` to render its configuration");
    std::process::exit(2);
}
