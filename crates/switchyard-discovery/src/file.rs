//! A file of endpoints, read again whenever it changes.
//!
//! The file is TOML (`[[endpoints]]` tables, or `endpoints = [...]`) or, if its name ends in
//! `.json`, JSON (a list, or `{"endpoints": [...]}`). Each endpoint has an `address`
//! (`http://HOST:PORT`; a bare `HOST:PORT` means `http://`), and optionally an `id` (default: the
//! address's `HOST:PORT`), a `weight` (default 1) and `labels`:
//!
//! ```toml
//! [[endpoints]]
//! address = "http://10.0.0.7:9001"
//!
//! [[endpoints]]
//! id = "big"
//! address = "10.0.0.8:9001"
//! weight = 3
//! labels = { zone = "b" }
//! ```
//!
//! The folder is watched with `notify` (inotify on Linux), so a change is seen at once, and a
//! file replaced by a rename (how editors and config management write files: write a temporary
//! file, rename it over the old one) is followed. Changes are read after a short quiet time
//! ([`SETTLE`]) so that a burst of writes is read once. A file that cannot be read or parsed
//! keeps the endpoints of the last good one; the error (with its line) is an item of the stream.
//! Write the file atomically (rename): a reader may otherwise see it half written, which is
//! either invalid (kept out, as above) or, if cut between two entries, a shorter list.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use serde::Deserialize;
use switchyard_core::Endpoint;
use tokio::sync::mpsc;

use crate::config::EndpointSpec;
use crate::error::DiscoveryError;
use crate::source::Source;

/// How long the file must stay unchanged after a change before it is read.
pub const SETTLE: Duration = Duration::from_millis(20);

impl Source {
    /// A source over the endpoints listed in the file at `path` (see the [module
    /// documentation](crate::file) for the format), read at once and again on every change.
    /// Fails if the file's folder cannot be watched; a missing or invalid file is an error
    /// item, not a failure (the source waits for it to appear or be fixed).
    pub fn file(path: impl Into<PathBuf>) -> Result<Self, DiscoveryError> {
        let path: PathBuf = path.into();
        let name = format!("file:{}", path.display());
        let setup = |message: String| DiscoveryError::Setup { source_name: name.clone(), message };
        let folder = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name =
            path.file_name().map(ToOwned::to_owned).ok_or_else(|| setup("not a file path".into()))?;
        // One pending signal is enough: the file is read whole after it.
        let (tx, rx) = mpsc::channel::<()>(1);
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let relevant = match &event {
                Ok(event) => event.paths.iter().any(|p| p.file_name() == Some(file_name.as_os_str())),
                // An overflow or watch error: read the file again to be sure.
                Err(_) => true,
            };
            if relevant {
                let _ = tx.try_send(());
            }
        })
        .map_err(|e| setup(format!("cannot watch: {e}")))?;
        watcher
            .watch(&folder, RecursiveMode::NonRecursive)
            .map_err(|e| setup(format!("cannot watch folder {}: {e}", folder.display())))?;
        let state = Watch { path, rx, _watcher: watcher, first: true, last: None };
        let snapshots = futures::stream::unfold(state, |mut state| async move {
            loop {
                if !state.first {
                    state.rx.recv().await?;
                    // Let a burst of writes settle; read once after it.
                    loop {
                        match tokio::time::timeout(SETTLE, state.rx.recv()).await {
                            Ok(Some(())) => continue,
                            Ok(None) => return None,
                            Err(_) => break,
                        }
                    }
                }
                state.first = false;
                let text = tokio::fs::read_to_string(&state.path).await.map_err(|e| e.to_string());
                // An event that left the file as it was (a rename reported twice, a touch)
                // announces nothing, and reports an error once.
                if state.last.as_ref() == Some(&text) {
                    continue;
                }
                let snapshot = match &text {
                    Ok(text) => parse(&state.path, text),
                    Err(e) => Err(DiscoveryError::File {
                        path: state.path.clone(),
                        line: None,
                        message: format!("cannot read: {e}"),
                    }),
                };
                state.last = Some(text);
                if let Err(e) = &snapshot {
                    tracing::warn!("{e}; keeping the endpoints of the last good version");
                }
                return Some((snapshot, state));
            }
        });
        Ok(Source::from_snapshots(name, snapshots))
    }
}

struct Watch {
    path: PathBuf,
    rx: mpsc::Receiver<()>,
    /// Watches while the source lives.
    _watcher: RecommendedWatcher,
    first: bool,
    /// The text last read (or why it could not be).
    last: Option<Result<String, String>>,
}

/// Parses an endpoint file's `text` (JSON if `path` ends in `.json`, else TOML).
pub fn parse(path: &Path, text: &str) -> Result<Vec<Endpoint>, DiscoveryError> {
    let error = |line: Option<usize>, message: String| DiscoveryError::File {
        path: path.to_path_buf(),
        line,
        message,
    };
    let entries: Vec<(Option<usize>, EndpointSpec)> = if path.extension().is_some_and(|e| e == "json") {
        let json_error = |e: serde_json::Error| error(Some(e.line()), e.to_string());
        let list = if text.trim_start().starts_with('[') {
            serde_json::from_str::<Vec<EndpointSpec>>(text).map_err(json_error)?
        } else {
            serde_json::from_str::<JsonFile>(text).map_err(json_error)?.endpoints
        };
        list.into_iter().map(|e| (None, e)).collect()
    } else {
        let file: TomlFile = toml::from_str(text)
            .map_err(|e| error(e.span().map(|s| line_of(text, s.start)), e.message().trim().to_string()))?;
        file.endpoints.into_iter().map(|e| (Some(line_of(text, e.span().start)), e.into_inner())).collect()
    };
    let mut ids = HashSet::new();
    let mut endpoints = Vec::with_capacity(entries.len());
    for (i, (line, entry)) in entries.into_iter().enumerate() {
        let endpoint =
            entry.into_endpoint().map_err(|m| error(line, format!("endpoints[{i}].address: {m}")))?;
        if !ids.insert(endpoint.id.clone()) {
            return Err(error(
                line,
                format!("endpoints[{i}].id: duplicate endpoint id {:?}", endpoint.id.as_str()),
            ));
        }
        endpoints.push(endpoint);
    }
    Ok(endpoints)
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlFile {
    #[serde(default)]
    endpoints: Vec<toml::Spanned<EndpointSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonFile {
    endpoints: Vec<EndpointSpec>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_read_the_same_endpoints() {
        let toml = "[[endpoints]]\naddress = \"10.0.0.1:9001\"\n\n[[endpoints]]\nid = \"big\"\naddress = \"http://10.0.0.2:9001\"\nweight = 3\nlabels = { zone = \"b\" }\n";
        let json = r#"[{"address": "10.0.0.1:9001"}, {"id": "big", "address": "http://10.0.0.2:9001", "weight": 3, "labels": {"zone": "b"}}]"#;
        let a = parse(Path::new("e.toml"), toml).unwrap();
        let b = parse(Path::new("e.json"), json).unwrap();
        assert_eq!(a, b);
        assert_eq!(a[0].id.as_str(), "10.0.0.1:9001");
        assert_eq!(a[0].address, "http://10.0.0.1:9001");
        assert_eq!((a[1].weight, a[1].labels.get("zone").map(String::as_str)), (3, Some("b")));
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse(Path::new("e.toml"), "[[endpoints]]\naddress = \"a:1\"\nweight = \"x\"\n").unwrap_err();
        assert!(matches!(e, DiscoveryError::File { line: Some(3), .. }), "{e}");
        let e = parse(
            Path::new("e.toml"),
            "[[endpoints]]\naddress = \"a:1\"\n[[endpoints]]\naddress = \"a:1\"\n",
        )
        .unwrap_err();
        assert!(matches!(e, DiscoveryError::File { line: Some(3), .. }), "{e}");
        assert!(e.to_string().contains("duplicate endpoint id"), "{e}");
        let e = parse(Path::new("e.json"), "[\n{\"address\": \"a:1\"},\n{\"adress\": 1}\n]").unwrap_err();
        assert!(matches!(e, DiscoveryError::File { line: Some(3), .. }), "{e}");
    }
}
