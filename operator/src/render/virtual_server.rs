//! VirtualMcpServers -> bundles of tools routed to their McpServers.

use std::collections::BTreeMap;

use mcpgate_crds::gateway_config::{VirtualMember, VirtualServerConfig};
use mcpgate_crds::names;
use mcpgate_crds::v1alpha1::{TargetKind, ToolSelection, VirtualMcpServer};

use super::access::AccessLists;
use super::server::ServerIndex;
use super::{Check, Diagnostic, Inputs, Kind, ObjectKey, Rendered, ResourceRef, key_of};
use crate::reasons::*;

pub(super) fn render(
    inputs: &Inputs,
    servers: &ServerIndex,
    access: &AccessLists,
    out: &mut Rendered,
) {
    let server_created: BTreeMap<ObjectKey, _> = inputs
        .servers
        .iter()
        .map(|s| (key_of(&**s), s.metadata.creation_timestamp.clone()))
        .collect();
    let mut sorted: Vec<_> = inputs.virtual_servers.iter().collect();
    sorted.sort_by_key(|v| key_of(&***v));

    for virtual_server in sorted {
        let key = key_of(&**virtual_server);
        let path = names::server_path(&key.namespace, &key.name);
        let plan = plan(virtual_server, &key, servers);

        let accepted = match server_created.get(&key) {
            Some(server_ts) if server_ts <= &virtual_server.metadata.creation_timestamp => {
                Check::fail(
                    REASON_ROUTE_CONFLICT,
                    format!("McpServer {key} already serves {path}: rename one of them"),
                )
            }
            _ => every_problem(&plan.invalid)
                .unwrap_or_else(|| Check::pass(REASON_ACCEPTED, "valid")),
        };
        let resolved = every_problem(&plan.unresolved)
            .unwrap_or_else(|| Check::pass(REASON_RESOLVED, "all servers and tools found"));
        let access_list = access.of(TargetKind::VirtualMcpServer, &key);
        let mut diagnostic =
            Diagnostic::new(virtual_server.metadata.generation, accepted, resolved);
        diagnostic.url = Some(path.clone());
        diagnostic.tool_count = plan.tool_count;
        diagnostic.subject_count =
            Some(i32::try_from(access_list.subjects.len()).unwrap_or(i32::MAX));

        if diagnostic.accepted.ok {
            if !diagnostic.resolved_refs.ok {
                diagnostic.ready = Check::pass(
                    REASON_DEGRADED,
                    format!(
                        "serving {} of {} servers: {}",
                        plan.members.len(),
                        virtual_server.spec.tools.len(),
                        diagnostic.resolved_refs.message
                    ),
                );
                diagnostic.ready.ok = false;
            }
            out.config.virtual_servers.push(VirtualServerConfig {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                path,
                description: virtual_server.spec.description.clone(),
                instructions: virtual_server.spec.instructions.clone(),
                members: plan.members,
                public: virtual_server.spec.public,
                access: access_list,
            });
        }
        out.diagnostics.insert(
            ResourceRef {
                kind: Kind::VirtualMcpServer,
                key,
            },
            diagnostic,
        );
    }
}

/// What a condition message may hold (the API server allows 32768 characters).
const MESSAGE_LIMIT: usize = 30_000;

/// One failed check naming every problem, so one `kubectl describe` shows all there is to
/// fix; the reason is the first problem's. None when there is no problem.
fn every_problem(problems: &[(&'static str, String)]) -> Option<Check> {
    let (reason, _) = problems.first()?;
    let mut message = String::new();
    for (listed, (_, problem)) in problems.iter().enumerate() {
        let separator = if listed == 0 { "" } else { "; " };
        if message.len() + separator.len() + problem.len() > MESSAGE_LIMIT {
            message.push_str(&format!("; and {} more", problems.len() - listed));
            break;
        }
        message.push_str(separator);
        message.push_str(problem);
    }
    Some(Check::fail(reason, message))
}

/// The members a virtual server can serve, and what is wrong with the rest.
#[derive(Default)]
struct Plan {
    members: Vec<VirtualMember>,
    /// Problems with the spec itself: the virtual server is not served.
    invalid: Vec<(&'static str, String)>,
    /// Missing servers or tools: served without them.
    unresolved: Vec<(&'static str, String)>,
    tool_count: Option<i32>,
}

fn plan(virtual_server: &VirtualMcpServer, key: &ObjectKey, servers: &ServerIndex) -> Plan {
    let mut plan = Plan::default();
    // exposed name -> "server/tool" that claims it
    let mut claimed: BTreeMap<String, String> = BTreeMap::new();
    let mut count_known = true;
    let mut count = 0usize;

    for selection in &virtual_server.spec.tools {
        let server_key = ObjectKey::new(&key.namespace, &selection.server);
        let Some(info) = servers.get(&server_key) else {
            plan.unresolved.push((
                REASON_UNKNOWN_SERVER,
                format!("McpServer {server_key} not found: create it or fix spec.tools[].server"),
            ));
            continue;
        };
        if let Err(why) = &info.ready {
            plan.unresolved.push((
                REASON_SERVER_NOT_READY,
                format!("McpServer {server_key} is not ready: {why}"),
            ));
            continue;
        }
        let all = selection.tools.iter().any(|t| t == "*");
        for unselected in selection
            .rename
            .keys()
            .filter(|k| !all && !selection.tools.contains(k))
        {
            plan.invalid.push((
                REASON_INVALID_SPEC,
                format!(
                    "spec.tools[].rename for server {}: {unselected:?} is not a selected tool: add it to tools or remove the rename",
                    selection.server
                ),
            ));
        }
        let mut tools = BTreeMap::new();
        for tool in selection
            .tools
            .iter()
            .filter(|t| *t != "*")
            .chain(renamed_only(selection, all))
        {
            let exposed = exposed_name(selection, tool);
            let offered = info.filter.permits(tool)
                && info
                    .tools
                    .as_ref()
                    .is_none_or(|known| known.iter().any(|k| k == tool));
            if !offered {
                plan.unresolved.push((
                    REASON_UNKNOWN_TOOL,
                    format!("McpServer {server_key} does not expose tool {tool:?}: check its spec.tools and the upstream"),
                ));
                continue;
            }
            tools.insert(tool.clone(), exposed);
        }
        // With "*" and a known tool list, every tool is checked now rather than at run time.
        // A problem only the upstream's list shows is not the spec's: the virtual server is
        // served, Degraded, and says which tool to rename.
        let mut expanded: Vec<(String, String, bool)> = tools
            .iter()
            .map(|(t, e)| (t.clone(), e.clone(), false))
            .collect();
        if all {
            match &info.tools {
                Some(known) => expanded.extend(
                    known
                        .iter()
                        .filter(|t| !tools.contains_key(*t))
                        .map(|t| (t.clone(), exposed_name(selection, t), true)),
                ),
                None => count_known = false,
            }
        }
        for (tool, exposed, discovered) in expanded {
            let problems = if discovered {
                &mut plan.unresolved
            } else {
                &mut plan.invalid
            };
            if !names::is_portable_tool_name(&exposed) {
                problems.push((
                    REASON_INVALID_TOOL_NAME,
                    format!(
                        "tool {tool:?} of McpServer {} would be exposed as {exposed:?}, which is not [A-Za-z0-9_-]{{1,64}}: add it to spec.tools[].rename",
                        selection.server
                    ),
                ));
                continue;
            }
            let owner = format!("{}/{tool}", selection.server);
            if let Some(previous) = claimed.insert(exposed.clone(), owner.clone()) {
                problems.push((
                    REASON_TOOL_NAME_COLLISION,
                    format!("{previous} and {owner} would both be exposed as {exposed:?}: rename one of them"),
                ));
            }
            count += 1;
        }
        plan.members.push(VirtualMember {
            server: selection.server.clone(),
            all,
            tools,
        });
    }
    plan.tool_count = count_known.then(|| i32::try_from(count).unwrap_or(i32::MAX));
    plan
}

/// With `"*"`, renamed tools need not be listed; they are mapped too.
fn renamed_only(selection: &ToolSelection, all: bool) -> impl Iterator<Item = &String> {
    selection
        .rename
        .keys()
        .filter(move |k| all && !selection.tools.contains(k))
}

fn exposed_name(selection: &ToolSelection, tool: &str) -> String {
    selection
        .rename
        .get(tool)
        .cloned()
        .unwrap_or_else(|| names::prefixed_tool_name(&selection.server, tool))
}
