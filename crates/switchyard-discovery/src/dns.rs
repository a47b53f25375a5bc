//! DNS: the addresses behind a name (A and AAAA), or its SRV records, resolved again when their
//! TTL runs out.
//!
//! This is how a Kubernetes headless Service is found without the API server: its name resolves
//! to the ready pods' addresses. Each resolution is a whole snapshot of the set, so an address
//! that no longer resolves is removed and only new ones are inserted. The next resolution comes
//! when the shortest TTL among the answers runs out, bounded below by `min_ttl` (1 s by default,
//! so a TTL of 0 does not become a busy loop) and above by `max_ttl` (60 s by default, so a long
//! TTL does not hide a change for long). The resolver's own cache is off: every resolution asks
//! the server.
//!
//! An answer with no records (NXDOMAIN, or no A/AAAA/SRV) means no endpoints; any other failure
//! (timeout, SERVFAIL, refused) keeps the last set, is reported (the first of a run of failures
//! as an error item, the rest in the log) and retried after `min_ttl`; a server that does not
//! answer is given up on after 2 s (twice).
//!
//! - A/AAAA: each address `IP` becomes the endpoint `IP:PORT` (`http://IP:PORT`).
//! - SRV: each record's target is resolved to its addresses, each becoming `IP:PORT` with the
//!   record's port, weighted by the record's weight (at least 1).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use switchyard_core::Endpoint;

use crate::config::DnsRecord;
use crate::error::DiscoveryError;
use crate::source::Source;

/// The shortest wait between two resolutions unless configured.
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(1);
/// The longest wait between two resolutions unless configured.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(60);

/// What a DNS source resolves, and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsTarget {
    /// The name.
    pub name: String,
    /// A/AAAA (with [`port`](Self::port)) or SRV.
    pub record: DnsRecord,
    /// The port of A/AAAA answers.
    pub port: u16,
    /// The shortest wait between resolutions.
    pub min_ttl: Duration,
    /// The longest wait between resolutions.
    pub max_ttl: Duration,
    /// The DNS server to ask; the system's configuration if `None`.
    pub server: Option<SocketAddr>,
}

impl DnsTarget {
    /// The A and AAAA records of `name`, on `port`, with the default TTL bounds and the system's
    /// resolver.
    pub fn a(name: impl Into<String>, port: u16) -> Self {
        Self {
            name: name.into(),
            record: DnsRecord::A,
            port,
            min_ttl: DEFAULT_MIN_TTL,
            max_ttl: DEFAULT_MAX_TTL,
            server: None,
        }
    }

    /// The SRV records of `name` (e.g. `_grpc._tcp.llm.serving.svc.cluster.local`).
    pub fn srv(name: impl Into<String>) -> Self {
        Self { record: DnsRecord::Srv, ..Self::a(name, 0) }
    }

    /// The same target, asking `server` rather than the system's resolvers.
    pub fn with_server(mut self, server: SocketAddr) -> Self {
        self.server = Some(server);
        self
    }

    /// The same target with these bounds on the wait between resolutions.
    pub fn with_ttl_bounds(mut self, min: Duration, max: Duration) -> Self {
        self.min_ttl = min;
        self.max_ttl = max.max(min);
        self
    }
}

impl Source {
    /// The endpoints `target` resolves to, resolved again on the answers' TTL: see the [module
    /// documentation](crate::dns).
    pub fn dns(target: DnsTarget) -> Self {
        let name = format!("dns:{}", target.name);
        let state = Resolving { name: name.clone(), target, resolver: None, wait: None, failing: false };
        let snapshots = futures::stream::unfold(state, |mut state| async move {
            loop {
                if let Some(wait) = state.wait.take() {
                    tokio::time::sleep(wait).await;
                }
                match state.resolve().await {
                    Ok((endpoints, ttl)) => {
                        state.failing = false;
                        state.wait = Some(ttl.clamp(state.target.min_ttl, state.target.max_ttl));
                        return Some((Ok(endpoints), state));
                    }
                    Err(message) => {
                        state.wait = Some(state.target.min_ttl);
                        if std::mem::replace(&mut state.failing, true) {
                            tracing::debug!(source = %state.name, "{message}");
                            continue;
                        }
                        let error = DiscoveryError::Backend { source_name: state.name.clone(), message };
                        return Some((Err(error), state));
                    }
                }
            }
        });
        Source::from_snapshots(name, snapshots)
    }
}

struct Resolving {
    name: String,
    target: DnsTarget,
    resolver: Option<TokioResolver>,
    wait: Option<Duration>,
    failing: bool,
}

impl Resolving {
    fn resolver(&mut self) -> Result<&TokioResolver, String> {
        if self.resolver.is_none() {
            let mut builder = match self.target.server {
                Some(server) => {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = server.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = server.port();
                    let config = ResolverConfig::from_name_servers(vec![NameServerConfig::new(
                        server.ip(),
                        true,
                        vec![udp, tcp],
                    )]);
                    Resolver::builder_with_config(config, TokioRuntimeProvider::default())
                }
                None => Resolver::builder_tokio()
                    .map_err(|e| format!("cannot read the system's resolver configuration: {e}"))?,
            };
            // Every resolution asks the server: the TTL is applied here, bounded. A server that
            // does not answer is given up on after 2 s, twice, rather than hold the set for long.
            let options = builder.options_mut();
            options.cache_size = 0;
            options.timeout = Duration::from_secs(2);
            options.attempts = 2;
            let resolver = builder.build().map_err(|e| format!("cannot build a resolver: {e}"))?;
            self.resolver = Some(resolver);
        }
        self.resolver.as_ref().ok_or_else(|| "no resolver".to_string())
    }

    /// The endpoints, and the shortest TTL among the answers.
    async fn resolve(&mut self) -> Result<(Vec<Endpoint>, Duration), String> {
        let target = self.target.clone();
        let resolver = self.resolver()?;
        let no_records = |ttl: Duration| Ok((Vec::new(), ttl));
        match target.record {
            DnsRecord::A => match addresses(resolver, &target.name).await {
                Ok((ips, ttl)) => Ok((ips.into_iter().map(|ip| endpoint(ip, target.port, 1)).collect(), ttl)),
                Err(Lookup::NoRecords) => no_records(target.min_ttl),
                Err(Lookup::Failed(e)) => Err(e),
            },
            DnsRecord::Srv => {
                let lookup = match resolver.lookup(target.name.as_str(), RecordType::SRV).await {
                    Ok(lookup) => lookup,
                    Err(e) if e.is_no_records_found() => return no_records(target.min_ttl),
                    Err(e) => return Err(format!("cannot resolve SRV {}: {e}", target.name)),
                };
                let mut ttl = u32::MAX;
                let mut endpoints = Vec::new();
                for record in lookup.answers() {
                    let RData::SRV(srv) = &record.data else { continue };
                    ttl = ttl.min(record.ttl);
                    match addresses(resolver, &srv.target.to_string()).await {
                        Ok((ips, target_ttl)) => {
                            ttl = ttl.min(target_ttl.as_secs().try_into().unwrap_or(u32::MAX));
                            endpoints
                                .extend(ips.into_iter().map(|ip| endpoint(ip, srv.port, srv.weight.max(1))));
                        }
                        Err(Lookup::NoRecords) => {}
                        Err(Lookup::Failed(e)) => return Err(e),
                    }
                }
                Ok((endpoints, Duration::from_secs(u64::from(ttl))))
            }
        }
    }
}

enum Lookup {
    NoRecords,
    Failed(String),
}

/// The A and AAAA answers for `name`, and their shortest TTL.
async fn addresses(resolver: &TokioResolver, name: &str) -> Result<(Vec<IpAddr>, Duration), Lookup> {
    match resolver.lookup_ip(name).await {
        Ok(lookup) => {
            let ttl = lookup.as_lookup().answers().iter().map(|r| r.ttl).min().unwrap_or(0);
            let mut ips: Vec<IpAddr> = lookup.iter().collect();
            ips.sort();
            ips.dedup();
            Ok((ips, Duration::from_secs(u64::from(ttl))))
        }
        Err(e) if e.is_no_records_found() => Err(Lookup::NoRecords),
        Err(e) => Err(Lookup::Failed(format!("cannot resolve {name}: {e}"))),
    }
}

fn endpoint(ip: IpAddr, port: u16, weight: u16) -> Endpoint {
    let addr = SocketAddr::new(ip, port);
    Endpoint::new(addr.to_string(), format!("http://{addr}")).with_weight(u32::from(weight))
}
