//! Sources as a configuration names them: the gateway's `[[pool.discovery]]` sections.
//!
//! ```toml
//! [[pool.discovery]]
//! kind = "file"                      # a TOML or JSON list, reloaded on change
//! path = "endpoints.toml"
//!
//! [[pool.discovery]]
//! kind = "static"
//! endpoints = [{ address = "http://10.0.0.7:9001" }]
//!
//! [[pool.discovery]]
//! kind = "dns"                       # A/AAAA of `name` on `port`, or SRV (record = "srv")
//! name = "llm.serving.svc.cluster.local"
//! port = 9001
//!
//! [[pool.discovery]]
//! kind = "etcd"                      # build with `--features etcd`
//! endpoints = ["http://127.0.0.1:2379"]
//! prefix = "/switchyard/llm/"
//! # Over TLS (servers `https://`): the cluster's CA, and a client certificate if etcd asks
//! # for one (`--client-cert-auth`); paths relative to the working directory.
//! # tls = { ca = "etcd-ca.pem", cert = "etcd-client.pem", key = "etcd-client-key.pem" }
//!
//! [[pool.discovery]]
//! kind = "kubernetes"                # build with `--features kubernetes`
//! service = "llm"
//! namespace = "serving"
//! port = "grpc"
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use switchyard_core::Endpoint;

use crate::dns::DnsTarget;
use crate::error::DiscoveryError;
use crate::source::Source;

/// One endpoint as a file or a `static` section lists it: an `address` (`http://HOST:PORT`, or a
/// bare `HOST:PORT`), and optionally an `id` (default: `HOST:PORT`), a `weight` (default 1) and
/// `labels`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// The endpoint's id; `HOST:PORT` of its address if not given.
    pub id: Option<String>,
    /// Where it listens.
    pub address: String,
    /// Its weight for weighted policies.
    #[serde(default = "one")]
    pub weight: u32,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

impl EndpointSpec {
    /// The endpoint, or why its address is not usable.
    pub fn into_endpoint(self) -> Result<Endpoint, String> {
        let address =
            if self.address.contains("://") { self.address } else { format!("http://{}", self.address) };
        let authority = address
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.authority().map(ToString::to_string))
            .ok_or_else(|| format!("{address:?} is not a URI with a host"))?;
        let mut endpoint = Endpoint::new(self.id.unwrap_or(authority), address).with_weight(self.weight);
        endpoint.labels = self.labels;
        Ok(endpoint)
    }
}

/// A discovery source as a configuration names it (`kind = "..."`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
#[non_exhaustive]
pub enum SourceConfig {
    /// A fixed list.
    Static(StaticConfig),
    /// A watched file.
    File(FileConfig),
    /// DNS A/AAAA or SRV records.
    Dns(DnsConfig),
    /// Keys under an etcd prefix (feature `etcd`).
    Etcd(EtcdConfig),
    /// A Kubernetes Service's EndpointSlices (feature `kubernetes`).
    Kubernetes(KubernetesConfig),
}

/// `kind = "static"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    /// The endpoints.
    pub endpoints: Vec<EndpointSpec>,
}

/// `kind = "file"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The file; a relative path is relative to the configuration file's folder.
    pub path: PathBuf,
}

/// `kind = "dns"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// The name to resolve (for SRV, e.g. `_grpc._tcp.llm.serving.svc.cluster.local`).
    pub name: String,
    /// The port of A/AAAA answers (SRV answers carry their own).
    pub port: Option<u16>,
    /// `"a"` (A and AAAA, the default) or `"srv"`.
    #[serde(default)]
    pub record: DnsRecord,
    /// The shortest wait between resolutions, whatever the TTL says (`"1s"` by default).
    pub min_ttl: Option<String>,
    /// The longest wait between resolutions, whatever the TTL says (`"60s"` by default).
    pub max_ttl: Option<String>,
    /// The DNS server (`IP:PORT`); the system's resolver configuration if not given.
    pub server: Option<String>,
}

/// Which DNS records a [`DnsConfig`] asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsRecord {
    /// A and AAAA records.
    #[default]
    A,
    /// SRV records (target and port).
    Srv,
}

impl DnsConfig {
    /// The target this section describes (validated).
    pub fn target(&self) -> Result<DnsTarget, String> {
        let duration = |field: &str, value: &Option<String>, default: Duration| match value {
            None => Ok(default),
            Some(v) => humantime::parse_duration(v).map_err(|e| format!("{field}: {v:?}: {e} (e.g. \"5s\")")),
        };
        let min = duration("min_ttl", &self.min_ttl, crate::dns::DEFAULT_MIN_TTL)?;
        let max = duration("max_ttl", &self.max_ttl, crate::dns::DEFAULT_MAX_TTL)?;
        if max < min {
            return Err(format!("max_ttl: {max:?} is shorter than min_ttl {min:?}"));
        }
        let mut target = match self.record {
            DnsRecord::A => {
                DnsTarget::a(&self.name, self.port.ok_or("port: A/AAAA records carry no port: give `port`")?)
            }
            DnsRecord::Srv => DnsTarget::srv(&self.name),
        }
        .with_ttl_bounds(min, max);
        if let Some(server) = &self.server {
            target = target
                .with_server(server.parse().map_err(|_| format!("server: {server:?} is not an IP:PORT"))?);
        }
        Ok(target)
    }
}

/// `kind = "etcd"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// The etcd servers, e.g. `["http://127.0.0.1:2379"]`.
    pub endpoints: Vec<String>,
    /// The key prefix under which endpoints are registered.
    pub prefix: String,
    /// TLS towards the servers (their addresses `https://`); none by default.
    #[serde(default)]
    pub tls: Option<EtcdTlsConfig>,
}

/// `tls` of an etcd source: PEM files.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTlsConfig {
    /// The CA the servers' certificates must chain to.
    pub ca: PathBuf,
    /// The client's certificate, for servers that ask for one (with `key`).
    pub cert: Option<PathBuf>,
    /// The client certificate's key.
    pub key: Option<PathBuf>,
    /// The name the servers' certificates must carry (their address's host if not given).
    pub server_name: Option<String>,
}

/// `kind = "kubernetes"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// The Service whose EndpointSlices are watched.
    pub service: String,
    /// Its namespace (`default` if not given).
    pub namespace: Option<String>,
    /// The name of the port to use (the slice's only port if not given).
    pub port: Option<String>,
}

impl SourceConfig {
    /// The kind, as configured.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Static(_) => "static",
            SourceConfig::File(_) => "file",
            SourceConfig::Dns(_) => "dns",
            SourceConfig::Etcd(_) => "etcd",
            SourceConfig::Kubernetes(_) => "kubernetes",
        }
    }

    /// Checks what the types cannot, and that this build has the source: a message naming the
    /// field, or how to build with it.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            SourceConfig::Static(c) => {
                for (i, e) in c.endpoints.iter().enumerate() {
                    e.clone().into_endpoint().map_err(|m| format!("endpoints[{i}].address: {m}"))?;
                }
                Ok(())
            }
            SourceConfig::File(c) if c.path.as_os_str().is_empty() => Err("path: empty".into()),
            SourceConfig::File(_) => Ok(()),
            SourceConfig::Dns(c) => {
                if c.name.is_empty() {
                    return Err("name: empty".into());
                }
                c.target().map(|_| ())
            }
            SourceConfig::Etcd(c) => {
                if c.endpoints.is_empty() {
                    return Err("endpoints: give at least one etcd server".into());
                }
                if c.prefix.is_empty() {
                    return Err("prefix: empty (it would watch every key)".into());
                }
                if let Some(tls) = &c.tls {
                    if tls.cert.is_some() != tls.key.is_some() {
                        return Err("tls: give both `cert` and `key`, or neither".into());
                    }
                    if let Some((i, server)) =
                        c.endpoints.iter().enumerate().find(|(_, s)| !s.starts_with("https://"))
                    {
                        return Err(format!(
                            "endpoints[{i}]: {server:?} is not https:// (the source has `tls`)"
                        ));
                    }
                }
                if cfg!(feature = "etcd") { Ok(()) } else { Err(not_built("etcd", "etcd")) }
            }
            SourceConfig::Kubernetes(c) => {
                if c.service.is_empty() {
                    return Err("service: empty".into());
                }
                if cfg!(feature = "kubernetes") { Ok(()) } else { Err(not_built("kubernetes", "kubernetes")) }
            }
        }
    }

    /// The source: its changes labelled with its name ([`Source::labelled`]). Errors as
    /// [`validate`](Self::validate)'s; a backend that cannot be reached yet is an error item of
    /// the source, not a failure here.
    pub fn build(&self) -> Result<Source, DiscoveryError> {
        let setup = |message: String| DiscoveryError::Setup { source_name: self.kind().into(), message };
        self.validate().map_err(setup)?;
        let source = match self {
            SourceConfig::Static(c) => {
                let endpoints = c.endpoints.iter().cloned().map(EndpointSpec::into_endpoint);
                Source::fixed(endpoints.collect::<Result<Vec<_>, _>>().map_err(setup)?)
            }
            SourceConfig::File(c) => Source::file(&c.path)?,
            SourceConfig::Dns(c) => Source::dns(c.target().map_err(setup)?),
            #[cfg(feature = "etcd")]
            SourceConfig::Etcd(c) => {
                let tls = match &c.tls {
                    Some(tls) => {
                        let identity = tls.cert.as_deref().zip(tls.key.as_deref());
                        let tls =
                            crate::etcd::EtcdTls::from_files(&tls.ca, identity, tls.server_name.as_deref())
                                .map_err(|e| setup(format!("tls: {e}")))?;
                        Some(tls)
                    }
                    None => None,
                };
                Source::etcd_with_tls(c.endpoints.clone(), c.prefix.clone(), tls)
            }
            #[cfg(feature = "kubernetes")]
            SourceConfig::Kubernetes(c) => Source::kubernetes(crate::kubernetes::KubernetesTarget {
                namespace: c.namespace.clone().unwrap_or_else(|| "default".into()),
                service: c.service.clone(),
                port: c.port.clone(),
            }),
            // Reached only by a source whose feature is off (validate has said so already).
            #[allow(unreachable_patterns)]
            _ => return Err(setup(format!("the {} source is not in this build", self.kind()))),
        };
        Ok(source.labelled())
    }
}

/// Why a configured source is not in this build, and how to build it in.
fn not_built(kind: &str, feature: &str) -> String {
    format!(
        "the {kind} discovery source is not in this build: build with `cargo build --release --features {feature}`{}",
        if feature == "etcd" {
            " (etcd-client's build runs `protoc`: scripts/install-test-deps.sh installs it)"
        } else {
            ""
        }
    )
}
