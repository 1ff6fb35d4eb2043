//! A validated, immutable view of one configuration version: everything the request path
//! needs, resolved once, off the request path.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Uri};
use mcpgate_crds::gateway_config::{
    CredentialForm, CredentialRef, GatewayConfig, SCHEMA_VERSION, ServerConfig, Upstream,
    UpstreamAuth, VirtualServerConfig,
};
use secrecy::{ExposeSecret, SecretString};

use crate::auth::access::Access;
use crate::outbound::api_key;

/// Credential values by Secret name and key.
pub type Credentials = BTreeMap<String, BTreeMap<String, SecretString>>;

/// Why a configuration could not be used (the previous one stays in service).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Written by a newer or older operator.
    #[error(
        "configuration schema {found} is not {SCHEMA_VERSION}: run an operator and proxy of the same release"
    )]
    Schema {
        /// What the file said.
        found: u32,
    },
    /// A route names a credential that was not delivered (yet).
    #[error("{server}: credential {secret}/{key} is missing")]
    MissingCredential {
        /// namespace/name.
        server: String,
        /// Secret name.
        secret: String,
        /// Key.
        key: String,
    },
    /// An upstream URL or header the operator should have rejected.
    #[error("{server}: {what}")]
    Invalid {
        /// namespace/name.
        server: String,
        /// What is wrong (never a credential value).
        what: String,
    },
}

/// One server route, ready to forward.
#[derive(Debug)]
pub struct ServerRoute {
    /// As rendered.
    pub config: ServerConfig,
    /// Parsed upstream endpoint, for remote servers.
    pub upstream: Option<Uri>,
    /// Headers injected on every upstream request (shared credentials), marked sensitive.
    pub inject: Vec<(HeaderName, HeaderValue)>,
    /// Per-user API keys from AuthOverrides: the headers for each user (name or email).
    pub users: HashMap<String, crate::outbound::Headers>,
    /// The client secret of an OAuth 2 mode, when the server has one.
    pub client_secret: Option<SecretString>,
    /// Who may use it.
    pub access: Access,
    /// The tool filter as sets, for lookups per call.
    tools: ToolSet,
}

/// A [`mcpgate_crds::gateway_config::ToolFilter`] as hash sets.
#[derive(Debug, Default)]
struct ToolSet {
    allow: std::collections::HashSet<String>,
    deny: std::collections::HashSet<String>,
}

impl ServerRoute {
    /// Whether upstream tool `name` is exposed (the server's allow and deny lists).
    pub fn permits(&self, name: &str) -> bool {
        (self.tools.allow.is_empty() || self.tools.allow.contains(name))
            && !self.tools.deny.contains(name)
    }

    /// `namespace/name`, as messages, records and pages name the server.
    pub fn key(&self) -> String {
        format!("{}/{}", self.config.namespace, self.config.name)
    }

    /// The headers an AuthOverride gives `caller` here (named by user or verified email).
    pub fn override_for(
        &self,
        caller: &crate::auth::Identity,
    ) -> Option<&crate::outbound::Headers> {
        self.users.get(&caller.user).or_else(|| {
            caller
                .email
                .as_ref()
                .and_then(|email| self.users.get(email))
        })
    }
}

/// What a path leads to.
#[derive(Debug, Clone)]
pub enum Route {
    /// An McpServer.
    Server(Arc<ServerRoute>),
    /// A VirtualMcpServer.
    Virtual(Arc<VirtualRoute>),
}

/// One virtual server, its members resolved to their server routes.
#[derive(Debug)]
pub struct VirtualRoute {
    /// As rendered.
    pub config: VirtualServerConfig,
    /// Members whose McpServer is in the configuration, in configuration order.
    pub members: Vec<Member>,
    /// Who may use it (its own collaborators, not its members').
    pub access: Access,
    /// Renamed tools: exposed name -> (member index, upstream name).
    renamed: HashMap<String, (usize, String)>,
}

/// One McpServer of a virtual server and the tools taken from it.
#[derive(Debug)]
pub struct Member {
    /// The server's route (upstream, credentials, its own tool filter).
    pub server: Arc<ServerRoute>,
    /// Every tool the server exposes, prefixed, unless renamed.
    pub all: bool,
    /// Upstream tool name -> exposed name.
    pub renames: BTreeMap<String, String>,
}

impl Route {
    /// Whether callers skip inbound authentication.
    pub fn public(&self) -> bool {
        match self {
            Self::Server(s) => s.config.public,
            Self::Virtual(v) => v.config.public,
        }
    }

    /// Who may use the route.
    pub fn access(&self) -> &Access {
        match self {
            Self::Server(s) => &s.access,
            Self::Virtual(v) => &v.access,
        }
    }

    /// Whether the route sends the caller's own bearer token out of the gateway: upstream
    /// (a `Passthrough` server), or to a token endpoint to exchange (a `TokenExchange`
    /// server), or a virtual server with such a member.
    pub fn forwards_caller_token(&self) -> bool {
        let passthrough = |s: &ServerRoute| {
            matches!(
                s.config.auth,
                UpstreamAuth::Passthrough | UpstreamAuth::TokenExchange { .. }
            )
        };
        match self {
            Self::Server(s) => passthrough(s),
            Self::Virtual(v) => v.members.iter().any(|m| passthrough(&m.server)),
        }
    }

    /// The McpServer route, if this is one.
    pub fn as_server(&self) -> Option<&Arc<ServerRoute>> {
        match self {
            Self::Server(s) => Some(s),
            Self::Virtual(_) => None,
        }
    }

    /// `(namespace, name)` of the McpServer or VirtualMcpServer.
    pub fn name(&self) -> (&str, &str) {
        match self {
            Self::Server(s) => (&s.config.namespace, &s.config.name),
            Self::Virtual(v) => (&v.config.namespace, &v.config.name),
        }
    }
}

impl Member {
    /// The McpServer's name, which prefixes its tools, prompts and resource URIs.
    pub fn name(&self) -> &str {
        &self.server.config.name
    }

    /// The name under which upstream tool `tool` is exposed, if it is.
    pub fn exposed_tool(&self, tool: &str) -> Option<String> {
        if !self.server.permits(tool) {
            return None;
        }
        match self.renames.get(tool) {
            Some(exposed) => Some(exposed.clone()),
            None if self.all => Some(format!("{}_{tool}", self.name())),
            None => None,
        }
    }
}

impl VirtualRoute {
    /// The member serving exposed tool `exposed`, and the tool's upstream name.
    pub fn resolve_tool(&self, exposed: &str) -> Option<(&Member, String)> {
        if let Some((index, tool)) = self.renamed.get(exposed) {
            let member = self.members.get(*index)?;
            return member.server.permits(tool).then(|| (member, tool.clone()));
        }
        let (server, tool) = exposed.split_once('_')?;
        let member = self.member(server)?;
        // `<server>_<tool>` names a tool taken whole and not renamed.
        (member.all && !member.renames.contains_key(tool) && member.server.permits(tool))
            .then(|| (member, tool.to_owned()))
    }

    /// The member named `server`.
    pub fn member(&self, server: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name() == server)
    }
}

/// One configuration version.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The operator's content hash.
    pub version: String,
    routes: HashMap<String, Route>,
}

impl Snapshot {
    /// Resolves and checks everything, or says what is wrong.
    pub fn build(config: GatewayConfig, credentials: &Credentials) -> Result<Self, SnapshotError> {
        if config.schema != SCHEMA_VERSION {
            return Err(SnapshotError::Schema {
                found: config.schema,
            });
        }
        let mut routes = HashMap::new();
        let mut servers = HashMap::new();
        for server in config.servers {
            let key = format!("{}/{}", server.namespace, server.name);
            let upstream = match &server.upstream {
                Upstream::Remote { url, .. } => {
                    Some(url.parse::<Uri>().map_err(|e| SnapshotError::Invalid {
                        server: key.clone(),
                        what: format!("upstream URL {url:?}: {e}"),
                    })?)
                }
                Upstream::OpenApi { .. } => None,
            };
            let invalid = |what: String| SnapshotError::Invalid {
                server: key.clone(),
                what,
            };
            let mut inject = Vec::new();
            let mut users = HashMap::new();
            let mut client_secret = None;
            match &server.auth {
                UpstreamAuth::SharedApiKey {
                    header,
                    template,
                    credential,
                } => {
                    let value = lookup(credentials, credential, &key)?;
                    inject.push(
                        api_key::header(header, template.as_deref(), value.expose_secret())
                            .map_err(invalid)?,
                    );
                }
                UpstreamAuth::PerUserApiKey {
                    header,
                    template,
                    overrides,
                } => {
                    for o in overrides {
                        let value = lookup(credentials, &o.credential, &key)?.expose_secret();
                        let headers = match o.form {
                            CredentialForm::ApiKey => {
                                vec![api_key::header(header, template.as_deref(), value)]
                            }
                            CredentialForm::Headers => api_key::headers(value.as_bytes())
                                .map_or_else(|e| vec![Err(e)], |h| h.into_iter().map(Ok).collect()),
                        }
                        .into_iter()
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| invalid(format!("AuthOverride for {:?}: {e}", o.user)))?;
                        users.insert(o.user.clone(), headers.into());
                    }
                }
                UpstreamAuth::OAuth2AuthorizationCode {
                    client_secret: Some(secret),
                    ..
                }
                | UpstreamAuth::OAuth2ClientCredentials {
                    client_secret: secret,
                    ..
                }
                | UpstreamAuth::TokenExchange {
                    client_secret: Some(secret),
                    ..
                } => client_secret = Some(lookup(credentials, secret, &key)?.clone()),
                _ => {}
            }
            let route = Arc::new(ServerRoute {
                access: Access::new(&server.access),
                tools: ToolSet {
                    allow: server.tools.allow.iter().cloned().collect(),
                    deny: server.tools.deny.iter().cloned().collect(),
                },
                config: server,
                upstream,
                inject,
                users,
                client_secret,
            });
            servers.insert(
                (route.config.namespace.clone(), route.config.name.clone()),
                route.clone(),
            );
            routes.insert(route.config.path.clone(), Route::Server(route));
        }
        for config in config.virtual_servers {
            let members: Vec<Member> = config
                .members
                .iter()
                .filter_map(|m| {
                    let server = servers.get(&(config.namespace.clone(), m.server.clone()));
                    if server.is_none() {
                        tracing::warn!(
                            virtual_server = %format!("{}/{}", config.namespace, config.name),
                            server = %m.server,
                            "member server is not in the configuration; its tools are left out"
                        );
                    }
                    Some(Member {
                        server: server?.clone(),
                        all: m.all,
                        renames: m.tools.clone(),
                    })
                })
                .collect();
            // Collisions are refused by the operator; should one arrive, the first member
            // keeps the name, as members are tried in order (later entries overwrite).
            let renamed = members
                .iter()
                .enumerate()
                .rev()
                .flat_map(|(i, m)| {
                    m.renames
                        .iter()
                        .map(move |(tool, exposed)| (exposed.clone(), (i, tool.clone())))
                })
                .collect();
            routes.insert(
                config.path.clone(),
                Route::Virtual(Arc::new(VirtualRoute {
                    access: Access::new(&config.access),
                    config,
                    members,
                    renamed,
                })),
            );
        }
        Ok(Self {
            version: config.version,
            routes,
        })
    }

    /// The McpServer `namespace/name`, if served.
    pub fn server(&self, key: &str) -> Option<&Arc<ServerRoute>> {
        let (namespace, name) = key.split_once('/')?;
        match self
            .routes
            .get(&mcpgate_crds::names::server_path(namespace, name))?
        {
            Route::Server(server) => Some(server),
            Route::Virtual(_) => None,
        }
    }

    /// The route at an exact, already normalised path.
    pub fn route(&self, path: &str) -> Option<&Route> {
        self.routes.get(path)
    }

    /// What a client of the route at `path` is offered (members, their tool filters and
    /// renames), as a comparable string; None when there is no such route.
    pub fn surface(&self, path: &str) -> Option<String> {
        let value = match self.routes.get(path)? {
            Route::Server(server) => serde_json::to_string(&server.config.tools),
            Route::Virtual(v) => {
                let members: Vec<_> = v
                    .members
                    .iter()
                    .map(|m| (m.name(), m.all, &m.renames, &m.server.config.tools))
                    .collect();
                serde_json::to_string(&(&v.config.members, members))
            }
        };
        value.ok()
    }

    /// Every route with its path, in no particular order.
    pub fn routes(&self) -> impl Iterator<Item = (&str, &Route)> {
        self.routes
            .iter()
            .map(|(path, route)| (path.as_str(), route))
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

fn lookup<'a>(
    credentials: &'a Credentials,
    r: &CredentialRef,
    server: &str,
) -> Result<&'a SecretString, SnapshotError> {
    credentials
        .get(&r.secret)
        .and_then(|s| s.get(&r.key))
        .ok_or_else(|| SnapshotError::MissingCredential {
            server: server.to_owned(),
            secret: r.secret.clone(),
            key: r.key.clone(),
        })
}
