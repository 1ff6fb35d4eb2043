//! Standalone: manifests from a directory -> the same render -> files the proxy watches.
//! No cluster: this is how the gateway runs on a laptop.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use mcpgate_crds::names::{CONFIG_FILE, CREDENTIALS_DIR};

use crate::error::{Error, Result};
use crate::render::{Inputs, Rendered, render};

/// Reads every `*.yaml`/`*.yml` file under `input` (sorted, recursively). Objects without a
/// namespace get `namespace`.
pub fn read_inputs(input: &Path, namespace: &str) -> Result<Inputs> {
    let mut files = Vec::new();
    collect(input, &mut files)?;
    files.sort();
    let mut inputs = Inputs::default();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let mut file = Inputs::default();
        file.add_yaml(&text, namespace)
            .map_err(|source| Error::Manifest {
                path: path.clone(),
                source,
            })?;
        admit(&file).map_err(|violations| Error::Invalid {
            path: path.clone(),
            violations,
        })?;
        inputs.extend(file);
    }
    Ok(inputs)
}

/// What the API server's admission would check with the CRDs' CEL rules, so a manifest that
/// a cluster would reject is rejected here too, with the same messages.
fn admit(inputs: &Inputs) -> std::result::Result<(), String> {
    fn check<K>(kind: &str, objects: &[std::sync::Arc<K>], violations: &mut Vec<String>)
    where
        K: kube::CustomResourceExt
            + kube::Resource
            + serde::Serialize
            + serde::de::DeserializeOwned,
    {
        for o in objects {
            let read = loopback_named_by_address(&**o);
            if let Err(errors) = kube::core::cel::validate_cel(read.as_ref().unwrap_or(&**o)) {
                let name = o.meta().name.as_deref().unwrap_or("?");
                violations.push(format!("{kind} {name}: {errors}"));
            }
        }
    }
    let mut violations = Vec::new();
    check("McpServer", &inputs.servers, &mut violations);
    check("VirtualMcpServer", &inputs.virtual_servers, &mut violations);
    check("McpCollaborator", &inputs.collaborators, &mut violations);
    check("AuthOverride", &inputs.overrides, &mut violations);
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations.join("; "))
    }
}

/// `object` with every `http://localhost` URL written `http://127.0.0.1`, if it has any.
/// kube-cel 0.8 reads `http://localhost...` as an absolute path, with no scheme and no host,
/// so the CRDs' URL rules would refuse here what the API server accepts; both name loopback,
/// which is all the rules distinguish. Only the copy validated is changed.
fn loopback_named_by_address<K>(object: &K) -> Option<K>
where
    K: serde::Serialize + serde::de::DeserializeOwned,
{
    fn visit(value: &mut serde_json::Value, changed: &mut bool) {
        match value {
            serde_json::Value::String(text) => {
                if let Some(rest) = text.strip_prefix("http://localhost")
                    && (rest.is_empty() || rest.starts_with([':', '/', '?', '#']))
                {
                    *text = format!("http://127.0.0.1{rest}");
                    *changed = true;
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| visit(v, changed)),
            serde_json::Value::Object(fields) => {
                fields.values_mut().for_each(|v| visit(v, changed))
            }
            _ => {}
        }
    }
    let mut value = serde_json::to_value(object).ok()?;
    let mut changed = false;
    visit(&mut value, &mut changed);
    changed
        .then(|| serde_json::from_value(value).ok())
        .flatten()
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let io = |source| Error::Io {
        path: dir.to_owned(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            collect(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(path);
        }
    }
    Ok(())
}

/// Writes `config.json` and `credentials/<secret>/<key>` under `output`. Each file is written
/// to a temporary name and renamed, and credentials before the configuration, so a reader
/// never sees a half-written file or a configuration naming missing credentials. Stale
/// credential folders are removed last. Returns whether anything changed.
pub fn write_output(rendered: &Rendered, output: &Path) -> Result<bool> {
    let credentials = output.join(CREDENTIALS_DIR);
    let mut changed = false;
    for (name, secret) in &rendered.secrets {
        let dir = credentials.join(name);
        create_dir(&dir)?;
        for (key, value) in &secret.data {
            changed |= write_if_changed(&dir.join(key), value.expose(), true)?;
        }
    }
    let json = serde_json::to_vec_pretty(&rendered.config).unwrap_or_default();
    changed |= write_if_changed(&output.join(CONFIG_FILE), &json, false)?;

    let wanted: BTreeSet<_> = rendered
        .secrets
        .keys()
        .map(|k| credentials.join(k))
        .collect();
    if credentials.is_dir() {
        for entry in std::fs::read_dir(&credentials).map_err(|source| Error::Io {
            path: credentials.clone(),
            source,
        })? {
            let path = entry
                .map_err(|source| Error::Io {
                    path: credentials.clone(),
                    source,
                })?
                .path();
            if !wanted.contains(&path) {
                std::fs::remove_dir_all(&path).map_err(|source| Error::Io {
                    path: path.clone(),
                    source,
                })?;
                changed = true;
            }
        }
    }
    Ok(changed)
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_owned(),
        source,
    })
}

fn write_if_changed(path: &Path, bytes: &[u8], private: bool) -> Result<bool> {
    if std::fs::read(path).is_ok_and(|current| current == bytes) {
        return Ok(false);
    }
    if let Some(parent) = path.parent() {
        create_dir(parent)?;
    }
    let tmp = path.with_extension("tmp");
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    std::fs::write(&tmp, bytes).map_err(io)?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(true)
}

/// One render from files to files; prints a line per resource that is not ready.
pub fn render_once(input: &Path, output: &Path, namespace: &str) -> Result<Rendered> {
    let inputs = read_inputs(input, namespace)?;
    let rendered = render(&inputs);
    write_output(&rendered, output)?;
    for (resource, d) in &rendered.diagnostics {
        if !d.ready.ok {
            tracing::warn!(
                kind = resource.kind.as_str(),
                resource = %resource.key,
                reason = d.ready.reason,
                "{}",
                d.ready.message
            );
        }
    }
    tracing::info!(
        version = %rendered.config.version,
        servers = rendered.config.servers.len(),
        virtual_servers = rendered.config.virtual_servers.len(),
        output = %output.display(),
        "rendered"
    );
    Ok(rendered)
}

/// Renders once, then again whenever a file under `input` changes, until `shutdown`.
/// A render that fails (an unreadable or invalid manifest) leaves the last good output in
/// place and is logged.
pub async fn watch(
    input: PathBuf,
    output: PathBuf,
    namespace: String,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    use notify::Watcher;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            // A full channel already holds a pending re-render.
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| Error::Io {
        path: input.clone(),
        source: std::io::Error::other(e),
    })?;
    watcher
        .watch(&input, notify::RecursiveMode::Recursive)
        .map_err(|e| Error::Io {
            path: input.clone(),
            source: std::io::Error::other(e),
        })?;
    // Watching first: an edit made while (or just after) the first render is heard.
    render_once(&input, &output, &namespace)?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            got = rx.recv() => if got.is_none() { break },
            () = &mut shutdown => break,
        }
        // Editors write in bursts; render once they are done.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        while rx.try_recv().is_ok() {}
        if let Err(error) = render_once(&input, &output, &namespace) {
            tracing::error!(%error, "render failed; keeping the last good output");
        }
    }
    Ok(())
}
