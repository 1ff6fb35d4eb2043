//! The pages people see at the gateway: small server-rendered HTML, no scripts and no
//! external assets, every value escaped, every form carrying its CSRF token.

use html_escape::{encode_double_quoted_attribute as attr, encode_text as text};

/// A route as the signed-in person may use it.
pub struct RouteLink {
    /// `namespace/name`.
    pub name: String,
    /// `McpServer` or `VirtualMcpServer`.
    pub kind: &'static str,
    /// Its absolute URL.
    pub url: String,
    /// Its gateway path.
    pub path: String,
}

/// An MCP client's authorization as listed.
pub struct GrantRow {
    /// Its id.
    pub id: String,
    /// The client, by name (or id).
    pub client: String,
    /// What it may use.
    pub resources: String,
    /// When it was given (RFC 3339).
    pub created: String,
}

/// A personal access token as listed.
pub struct TokenRow {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Created, expires (RFC 3339).
    pub created: String,
    /// Expiry (RFC 3339).
    pub expires: String,
    /// The route it is restricted to.
    pub route: Option<String>,
}

/// A server that takes each user's own credential, as listed for one person.
pub struct ConnectionRow {
    /// `namespace/name`.
    pub server: String,
    /// What it takes, e.g. "API key".
    pub what: &'static str,
    /// What the gateway holds.
    pub state: ConnectionState,
}

/// What the gateway holds of one person's credential for one server.
pub enum ConnectionState {
    /// Nothing: calls fail until they supply it.
    Missing,
    /// What they entered, saved at this time (RFC 3339).
    Stored(String),
    /// Their OAuth authorization, last renewed at this time (RFC 3339).
    Connected(String),
    /// A tenant admin set it (an AuthOverride); they cannot change it here.
    SetByAdministrator,
}

impl ConnectionState {
    fn describe(&self) -> String {
        match self {
            Self::Missing => "not connected: calls fail until you add it".into(),
            Self::Stored(when) => format!("yours, saved {when}"),
            Self::Connected(when) => format!("connected {when}"),
            Self::SetByAdministrator => "set by your administrator".into(),
        }
    }
}

/// A whole page.
pub fn page(title: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="same-origin">
<title>{title} · mcpgate</title>
<style>
body{{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;line-height:1.5;color:#1a1a1a}}
h1{{font-size:1.5rem}} h2{{font-size:1.15rem;margin-top:2rem}}
pre,code{{background:#f3f3f3;border-radius:4px}} pre{{padding:.75rem;overflow-x:auto}}
button{{font-size:1rem;padding:.4rem 1rem;margin-right:.5rem}}
table{{border-collapse:collapse;width:100%}} th,td{{text-align:left;padding:.3rem;border-bottom:1px solid #ddd}}
.warn{{background:#fff4d6;padding:.75rem;border-radius:4px}}
.ok{{background:#e3f6e3;padding:.75rem;border-radius:4px}}
label{{display:block;margin-top:.75rem}}
</style>
</head>
<body>
<main>
<h1>{title}</h1>
{body}
</main>
</body>
</html>
"#,
        title = text(title)
    )
}

/// A page that says what went wrong and what to do.
pub fn problem(title: &str, message: &str) -> String {
    page(
        title,
        &format!(
            "<p role=\"alert\">{}</p><p><a href=\"/-/\">Back to the gateway</a></p>",
            text(message)
        ),
    )
}

fn csrf_field(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        attr(csrf)
    )
}

/// The consent page: which client, on whose behalf, for which servers, where it goes next.
#[allow(clippy::too_many_arguments)]
pub fn consent(
    user: &str,
    client_name: Option<&str>,
    client_id: &str,
    registered: bool,
    redirect_host: &str,
    routes: &[String],
    scope: &str,
    request: &str,
    csrf: &str,
) -> String {
    let scope = if scope.is_empty() {
        String::new()
    } else {
        format!("<p>Scope asked for: <code>{}</code></p>", text(scope))
    };
    let who = match client_name {
        Some(name) => format!("<strong>{}</strong>", text(name)),
        None => "An MCP client".to_owned(),
    };
    let provenance = if registered {
        "This client registered itself with the gateway: its name is its own claim. Allow only a client you just started yourself."
    } else {
        "This client is described by the document at its client ID."
    };
    let servers: String = routes
        .iter()
        .map(|r| format!("<li><code>{}</code></li>", text(r)))
        .collect();
    page(
        "Allow access?",
        &format!(
            r#"<p>{who} asks to use MCP servers at this gateway as <strong>{user}</strong>:</p>
<ul>{servers}</ul>
{scope}
<p class="warn">{provenance}<br>Client ID: <code>{client_id}</code><br>After you decide, your browser goes to <code>{redirect_host}</code>.</p>
<form method="post" action="/-/oauth/authorize">
{csrf}
<input type="hidden" name="request" value="{request}">
<button type="submit" name="decision" value="allow" id="allow">Allow</button>
<button type="submit" name="decision" value="deny" id="deny">Deny</button>
</form>"#,
            user = text(user),
            provenance = text(provenance),
            client_id = text(client_id),
            redirect_host = text(redirect_host),
            csrf = csrf_field(csrf),
            request = attr(request),
        ),
    )
}

/// The signed-in home: the routes this person may use, the clients they allowed, and the
/// way out.
pub fn home(
    user: &str,
    email: Option<&str>,
    routes: &[RouteLink],
    grants: &[GrantRow],
    csrf: &str,
) -> String {
    let clients = if grants.is_empty() {
        "<p>No MCP client holds an authorization from you.</p>".to_owned()
    } else {
        let body: String = grants
            .iter()
            .map(|g| {
                format!(
                    "<tr><td>{client}</td><td>{resources}</td><td>{created}</td><td><form method=\"post\" action=\"/-/grants/revoke\">{csrf}<input type=\"hidden\" name=\"id\" value=\"{id}\"><button type=\"submit\" aria-label=\"Revoke {client}\">Revoke</button></form></td></tr>",
                    client = text(&g.client),
                    resources = text(&g.resources),
                    created = text(&g.created),
                    id = attr(&g.id),
                    csrf = csrf_field(csrf),
                )
            })
            .collect();
        format!(
            "<table><thead><tr><th>Client</th><th>May use</th><th>Allowed</th><th></th></tr></thead><tbody>{body}</tbody></table>"
        )
    };
    let email = email.map(|e| format!(" ({})", text(e))).unwrap_or_default();
    let rows: String = if routes.is_empty() {
        "<p>No MCP server at this gateway lists you as a collaborator yet.</p>".to_owned()
    } else {
        let items: String = routes
            .iter()
            .map(|r| {
                format!(
                    "<li><a href=\"/-/connect{path}\">{name}</a> ({kind})</li>",
                    path = attr(&r.path),
                    name = text(&r.name),
                    kind = r.kind
                )
            })
            .collect();
        format!("<ul>{items}</ul>")
    };
    page(
        "MCP servers you can use",
        &format!(
            r#"<p>Signed in as <strong>{user}</strong>{email}.</p>
{rows}
<h2>MCP clients you allowed</h2>
<p>Each keeps its access, with the groups you had when you allowed it, until you revoke it or it expires.</p>
{clients}
<p><a href="/-/tokens">Personal access tokens</a> for scripts and agents.</p>
<p><a href="/-/connections">Your credentials for servers</a> that act as you upstream.</p>
<form method="post" action="/-/signout">{csrf}<button type="submit" id="sign-out">Sign out</button></form>"#,
            user = text(user),
            csrf = csrf_field(csrf),
        ),
    )
}

/// How to connect clients to one route.
pub fn connect(route: &RouteLink) -> String {
    let short = route.name.rsplit('/').next().unwrap_or(&route.name);
    let url = &route.url;
    let cursor =
        format!("{{\n  \"mcpServers\": {{\n    \"{short}\": {{ \"url\": \"{url}\" }}\n  }}\n}}");
    let vscode = format!(
        "{{\n  \"servers\": {{\n    \"{short}\": {{ \"type\": \"http\", \"url\": \"{url}\" }}\n  }}\n}}"
    );
    let curl = format!(
        "curl -sS {url} \\\n  -H \"Authorization: Bearer $MCPGATE_TOKEN\" \\\n  -H 'Content-Type: application/json' \\\n  -H 'Accept: application/json, text/event-stream' \\\n  -H 'MCP-Protocol-Version: 2025-11-25' \\\n  -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{{\"protocolVersion\":\"2025-11-25\",\"capabilities\":{{}},\"clientInfo\":{{\"name\":\"curl\",\"version\":\"1\"}}}}}}'"
    );
    let python = format!(
        "import asyncio, httpx2\nfrom mcp import Client\nfrom mcp.client.streamable_http import streamable_http_client\n\nasync def main():\n    headers = {{\"Authorization\": \"Bearer <token>\"}}\n    async with httpx2.AsyncClient(headers=headers) as http:\n        async with Client(streamable_http_client(\"{url}\", http_client=http)) as client:\n            print(await client.list_tools())\n\nasyncio.run(main())"
    );
    page(
        &format!("Connect to {}", route.name),
        &format!(
            r#"<p>{kind} <code>{name}</code> is served at:</p>
<pre id="url">{url}</pre>
<p>Clients that support MCP authorization only need this URL: they open your browser, you sign in and allow them, and they are connected.</p>
<h2>Claude Code</h2>
<pre>claude mcp add --transport http {short} {url}</pre>
<h2>Cursor (<code>~/.cursor/mcp.json</code>)</h2>
<pre>{cursor}</pre>
<h2>VS Code (<code>.vscode/mcp.json</code>)</h2>
<pre>{vscode}</pre>
<h2>curl, with a <a href="/-/tokens">personal access token</a></h2>
<pre>{curl}</pre>
<h2>Python <code>mcp</code> client, with a personal access token</h2>
<pre>{python}</pre>
<p><a href="/-/">All your servers</a></p>"#,
            kind = route.kind,
            name = text(&route.name),
            url = text(url),
            short = text(short),
            cursor = text(&cursor),
            vscode = text(&vscode),
            curl = text(&curl),
            python = text(&python),
        ),
    )
}

/// The personal access tokens page; `created` shows a new token once.
pub fn tokens(
    rows: &[TokenRow],
    routes: &[RouteLink],
    created: Option<(&str, &str)>,
    csrf: &str,
) -> String {
    let fresh = created
        .map(|(name, token)| {
            format!(
                "<div class=\"warn\" role=\"status\"><p>Token <strong>{}</strong> created. Copy it now: it is not shown again.</p><pre id=\"new-token\">{}</pre></div>",
                text(name),
                text(token)
            )
        })
        .unwrap_or_default();
    let list = if rows.is_empty() {
        "<p>You have no personal access tokens.</p>".to_owned()
    } else {
        let body: String = rows
            .iter()
            .map(|row| {
                format!(
                    "<tr><td>{name}</td><td>{route}</td><td>{created}</td><td>{expires}</td><td><form method=\"post\" action=\"/-/tokens/revoke\">{csrf}<input type=\"hidden\" name=\"id\" value=\"{id}\"><button type=\"submit\" aria-label=\"Revoke {name}\">Revoke</button></form></td></tr>",
                    name = text(&row.name),
                    route = text(row.route.as_deref().unwrap_or("all your servers")),
                    created = text(&row.created),
                    expires = text(&row.expires),
                    id = attr(&row.id),
                    csrf = csrf_field(csrf),
                )
            })
            .collect();
        format!(
            "<table><thead><tr><th>Name</th><th>Usable on</th><th>Created</th><th>Expires</th><th></th></tr></thead><tbody>{body}</tbody></table>"
        )
    };
    let options: String = routes
        .iter()
        .map(|r| {
            format!(
                "<option value=\"{}\">{}</option>",
                attr(&r.path),
                text(&r.name)
            )
        })
        .collect();
    page(
        "Personal access tokens",
        &format!(
            r#"{fresh}
<p>A personal access token lets a script or agent call MCP servers as you. Send it as <code>Authorization: Bearer &lt;token&gt;</code>.</p>
{list}
<h2>New token</h2>
<form method="post" action="/-/tokens">
{csrf}
<label for="name">Name</label>
<input id="name" name="name" required maxlength="60">
<label for="days">Expires after</label>
<select id="days" name="days"><option value="7">7 days</option><option value="30" selected>30 days</option><option value="90">90 days</option><option value="365">365 days</option></select>
<label for="route">Usable on</label>
<select id="route" name="route"><option value="">all servers you may use</option>{options}</select>
<p><button type="submit" id="create">Create token</button></p>
</form>
<p><a href="/-/">All your servers</a></p>"#,
            csrf = csrf_field(csrf),
        ),
    )
}

/// The servers that take the person's own credential.
pub fn connections(rows: &[ConnectionRow]) -> String {
    let list = if rows.is_empty() {
        "<p>None of the servers you may use needs a credential of your own.</p>".to_owned()
    } else {
        let body: String = rows
            .iter()
            .map(|row| {
                format!(
                    "<tr><td><a href=\"/-/connections/{href}\">{server}</a></td><td>{what}</td><td>{state}</td></tr>",
                    href = attr(&row.server),
                    server = text(&row.server),
                    what = text(row.what),
                    state = text(&row.state.describe()),
                )
            })
            .collect();
        format!(
            "<table><thead><tr><th>Server</th><th>Needs your</th><th>The gateway holds</th></tr></thead><tbody>{body}</tbody></table>"
        )
    };
    page(
        "Your credentials for servers",
        &format!(
            "<p>These servers act as you upstream, with a credential of yours. The gateway keeps it sealed and sends it only to that server; it is never shown again.</p>{list}<p><a href=\"/-/\">All your servers</a></p>"
        ),
    )
}

/// One server's credential: enter, replace or delete the person's API key, or connect and
/// disconnect their OAuth authorization (`oauth`).
pub fn connection(
    server: &str,
    oauth: bool,
    state: &ConnectionState,
    notice: Option<&str>,
    csrf: &str,
) -> String {
    let notice = notice
        .map(|n| format!("<div class=\"ok\" role=\"status\"><p>{}</p></div>", text(n)))
        .unwrap_or_default();
    let action = format!("/-/connections/{}", attr(server));
    let stored = matches!(
        state,
        ConnectionState::Stored(_) | ConnectionState::Connected(_)
    );
    let button = |name: &str, id: &str, label: &str| {
        format!(
            "<form method=\"post\" action=\"{action}\">{csrf}<input type=\"hidden\" name=\"action\" value=\"{name}\"><p><button type=\"submit\" id=\"{id}\">{label}</button></p></form>",
            csrf = csrf_field(csrf),
        )
    };
    let form = match (state, oauth) {
        (ConnectionState::SetByAdministrator, _) => {
            "<p>Your administrator set your key for this server. Ask them to change it.</p>"
                .to_owned()
        }
        (_, true) => {
            let disconnect = if stored {
                button("delete", "disconnect", "Disconnect")
            } else {
                String::new()
            };
            format!(
                "<p>Connecting takes you to the server's sign-in to let the gateway act for you there; you come back here after.</p>{connect}{disconnect}",
                connect = button(
                    "connect",
                    "connect",
                    if stored { "Connect again" } else { "Connect" }
                ),
            )
        }
        (_, false) => {
            let delete = if stored {
                button("delete", "delete", "Delete my key")
            } else {
                String::new()
            };
            format!(
                r#"<form method="post" action="{action}">
{csrf}
<input type="hidden" name="action" value="save">
<label for="key">Your API key</label>
<input id="key" name="key" type="password" autocomplete="off" required maxlength="{max}">
<p><button type="submit" id="save">{verb}</button></p>
</form>
{delete}"#,
                csrf = csrf_field(csrf),
                max = crate::outbound::api_key::MAX_KEY_BYTES,
                verb = if stored {
                    "Replace my key"
                } else {
                    "Save my key"
                },
            )
        }
    };
    let (title, what) = if oauth {
        (
            "Your authorization for",
            "your own authorization at its OAuth provider",
        )
    } else {
        ("Your API key for", "your own API key")
    };
    page(
        &format!("{title} {server}"),
        &format!(
            r#"{notice}<p>McpServer <code>{name}</code> calls its upstream with {what}. The gateway holds: <strong id="state">{state}</strong>.</p>
{form}
<p><a href="/-/connections">All your credentials</a></p>"#,
            name = text(server),
            state = text(&state.describe()),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_everywhere() {
        let evil = "<script>alert(1)</script>\"'";
        let html = consent(
            evil,
            Some(evil),
            evil,
            true,
            evil,
            &[evil.into()],
            evil,
            evil,
            evil,
        );
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"));
        let route = RouteLink {
            name: evil.into(),
            kind: "McpServer",
            url: evil.into(),
            path: evil.into(),
        };
        for html in [
            home(
                evil,
                Some(evil),
                std::slice::from_ref(&route),
                &[GrantRow {
                    id: evil.into(),
                    client: evil.into(),
                    resources: evil.into(),
                    created: evil.into(),
                }],
                evil,
            ),
            connect(&route),
            tokens(
                &[TokenRow {
                    id: evil.into(),
                    name: evil.into(),
                    created: evil.into(),
                    expires: evil.into(),
                    route: Some(evil.into()),
                }],
                std::slice::from_ref(&route),
                Some((evil, evil)),
                evil,
            ),
            problem(evil, evil),
        ] {
            assert!(!html.contains("<script>"), "{html}");
        }
    }

    #[test]
    fn every_form_carries_its_csrf_token() {
        let route = RouteLink {
            name: "team-a/github".into(),
            kind: "McpServer",
            url: "https://gw/team-a/mcp/github/server".into(),
            path: "/team-a/mcp/github/server".into(),
        };
        let row = TokenRow {
            id: "t1".into(),
            name: "ci".into(),
            created: "now".into(),
            expires: "later".into(),
            route: None,
        };
        for html in [
            consent("alice", None, "c", true, "h", &[], "mcp", "r", "CSRF-1"),
            home(
                "alice",
                None,
                &[],
                &[GrantRow {
                    id: "g".into(),
                    client: "c".into(),
                    resources: "r".into(),
                    created: "t".into(),
                }],
                "CSRF-1",
            ),
            tokens(&[row], &[route], None, "CSRF-1"),
        ] {
            let forms = html.matches("<form").count();
            assert!(forms > 0);
            assert_eq!(
                html.matches("name=\"csrf\" value=\"CSRF-1\"").count(),
                forms,
                "{html}"
            );
            assert!(!html.contains("<script"), "no scripts");
            assert!(!html.contains("src=\"http"), "no external assets");
        }
    }
}
