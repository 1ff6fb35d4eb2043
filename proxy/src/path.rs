//! Request paths -> route keys. Matching is exact after normalisation, and anything that
//! could make two spellings reach different routes is refused rather than rewritten.

/// The route key (`/{namespace}/mcp/{name}/server`) for a request path, or None when the
/// path is not a gateway route or is spelled ambiguously: percent-encoded characters, dot
/// segments, empty segments, or a trailing slash.
pub fn route_key(path: &str) -> Option<&str> {
    let rest = path.strip_prefix('/')?;
    let segments: Vec<&str> = rest.split('/').collect();
    let [namespace, "mcp", name, "server"] = segments.as_slice() else {
        return None;
    };
    let plain = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    (plain(namespace) && plain(name)).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::route_key;

    #[test]
    fn exact_routes_match() {
        assert_eq!(
            route_key("/team-a/mcp/github/server"),
            Some("/team-a/mcp/github/server")
        );
    }

    #[test]
    fn tricks_never_reach_a_route() {
        for path in [
            "/team-a/mcp/github/server/",
            "//team-a/mcp/github/server",
            "/team-a//mcp/github/server",
            "/team-a/mcp/github/../other/server",
            "/team-a/mcp/./github/server",
            "/team-a/mcp/%2e%2e/server",
            "/team-a%2Fmcp%2Fgithub/mcp/x/server",
            "/team-a/mcp/git%68ub/server",
            "/Team-A/mcp/github/server",
            "/team-a/MCP/github/server",
            "/team-a/mcp/github/server/extra",
            "/team-a/mcp/github",
            "/",
            "",
        ] {
            assert_eq!(route_key(path), None, "{path:?}");
        }
    }
}
