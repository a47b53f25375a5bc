//! The DNS source against a real DNS server on a loopback port (an in-process hickory-server,
//! authoritative for `test.`) whose records change during the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hickory_server::net::runtime::{Time, TokioRuntimeProvider};
use hickory_server::proto::rr::rdata::{A, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType, RrKey};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use switchyard_discovery::dns::DnsTarget;
use switchyard_discovery::{DiscoveryError, EndpointChange, Source};

type Zone = InMemoryZoneHandler<TokioRuntimeProvider>;

/// An authoritative server for `test.` on a loopback UDP port, counting the queries it answers.
struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Zone>,
    queries: Arc<AtomicUsize>,
    serial: u32,
    _server: hickory_server::Server<Counting>,
}

struct Counting {
    catalog: Catalog,
    queries: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl RequestHandler for Counting {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        self.queries.fetch_add(1, Ordering::Relaxed);
        self.catalog.handle_request::<R, T>(request, response).await
    }
}

fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

impl DnsServer {
    async fn start() -> Self {
        let origin = name("test.");
        let soa = SOA::new(name("ns.test."), name("admin.test."), 1, 60, 60, 60, 0);
        let mut zone = Zone::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        assert!(zone.upsert_mut(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1));
        let zone = Arc::new(zone);
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin), vec![zone.clone()]);
        let queries = Arc::new(AtomicUsize::new(0));
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut server = hickory_server::Server::new(Counting { catalog, queries: queries.clone() });
        server.register_socket(socket);
        Self { addr, zone, queries, serial: 1, _server: server }
    }

    /// Makes `records` the whole set of `record_type` records of `owner`.
    async fn set(&mut self, owner: &str, record_type: RecordType, records: Vec<Record>) {
        self.serial += 1;
        self.zone.records_mut().await.remove(&RrKey::new(LowerName::new(&name(owner)), record_type));
        for record in records {
            assert!(self.zone.upsert(record, self.serial).await);
        }
    }

    async fn set_a(&mut self, owner: &str, ttl: u32, ips: &[[u8; 4]]) {
        let records = ips
            .iter()
            .map(|ip| Record::from_rdata(name(owner), ttl, RData::A(A(Ipv4Addr::from(*ip)))))
            .collect();
        self.set(owner, RecordType::A, records).await;
    }

    fn queries(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }
}

fn describe(change: &EndpointChange) -> String {
    match change {
        EndpointChange::Insert(id, e) => format!("+{id}/{}", e.weight),
        EndpointChange::Remove(id) => format!("-{id}"),
    }
}

async fn changes(source: &mut Source, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let item = tokio::time::timeout(Duration::from_secs(20), source.next())
            .await
            .expect("a change within 20 s")
            .expect("the source does not end");
        out.push(describe(&item.expect("a change, not an error")));
    }
    out.sort();
    out
}

async fn quiet(source: &mut Source, time: Duration) {
    let more = tokio::time::timeout(time, source.next()).await;
    assert!(more.is_err(), "unexpected item: {:?}", more.map(|i| i.map(|i| i.map(|c| describe(&c)))));
}

#[tokio::test]
async fn dns_source_re_resolves_on_the_ttl_and_announces_differences() {
    let mut dns = DnsServer::start().await;
    dns.set_a("llm.test.", 1, &[[10, 0, 0, 1], [10, 0, 0, 2]]).await;
    let target = DnsTarget::a("llm.test.", 9001)
        .with_server(dns.addr)
        .with_ttl_bounds(Duration::from_millis(100), Duration::from_secs(60));
    let mut source = Source::dns(target);
    assert_eq!(changes(&mut source, 2).await, ["+10.0.0.1:9001/1", "+10.0.0.2:9001/1"]);

    // Unchanged over several TTLs: asked again, nothing announced.
    let asked = dns.queries();
    quiet(&mut source, Duration::from_millis(2500)).await;
    assert!(dns.queries() >= asked + 2, "re-resolved on the 1 s TTL: {} queries", dns.queries() - asked);

    // A change is seen within the TTL.
    let changed = Instant::now();
    dns.set_a("llm.test.", 1, &[[10, 0, 0, 2], [10, 0, 0, 3]]).await;
    assert_eq!(changes(&mut source, 2).await, ["+10.0.0.3:9001/1", "-10.0.0.1:9001"]);
    let seen = changed.elapsed();
    println!("DNS change seen after {seen:?} (TTL 1 s)");
    assert!(seen < Duration::from_secs(5), "{seen:?}");

    // No records: no endpoints.
    dns.set("llm.test.", RecordType::A, Vec::new()).await;
    assert_eq!(changes(&mut source, 2).await, ["-10.0.0.2:9001", "-10.0.0.3:9001"]);
}

#[tokio::test]
async fn dns_ttl_is_bounded_below_and_above() {
    let mut dns = DnsServer::start().await;
    // A TTL of an hour, bounded to 300 ms: a change is seen long before the hour.
    dns.set_a("long.test.", 3600, &[[10, 0, 1, 1]]).await;
    let target = DnsTarget::a("long.test.", 1)
        .with_server(dns.addr)
        .with_ttl_bounds(Duration::from_millis(100), Duration::from_millis(300));
    let mut source = Source::dns(target);
    assert_eq!(changes(&mut source, 1).await, ["+10.0.1.1:1/1"]);
    dns.set_a("long.test.", 3600, &[[10, 0, 1, 2]]).await;
    assert_eq!(changes(&mut source, 2).await, ["+10.0.1.2:1/1", "-10.0.1.1:1"]);
    drop(source);

    // A TTL of 0, bounded to 500 ms: no busy loop.
    dns.set_a("zero.test.", 0, &[[10, 0, 2, 1]]).await;
    let target = DnsTarget::a("zero.test.", 1)
        .with_server(dns.addr)
        .with_ttl_bounds(Duration::from_millis(500), Duration::from_secs(60));
    let mut source = Source::dns(target);
    assert_eq!(changes(&mut source, 1).await, ["+10.0.2.1:1/1"]);
    let asked = dns.queries();
    quiet(&mut source, Duration::from_secs(2)).await;
    let queries = dns.queries() - asked;
    assert!((2..=6).contains(&queries), "about one query per 500 ms over 2 s, not a busy loop: {queries}");
}

#[tokio::test]
async fn dns_srv_records_give_targets_ports_and_weights() {
    let mut dns = DnsServer::start().await;
    dns.set_a("a.test.", 5, &[[10, 0, 3, 1]]).await;
    dns.set_a("b.test.", 5, &[[10, 0, 3, 2]]).await;
    let srv = |weight, port, target: &str| {
        Record::from_rdata(name("_grpc._tcp.test."), 1, RData::SRV(SRV::new(0, weight, port, name(target))))
    };
    dns.set("_grpc._tcp.test.", RecordType::SRV, vec![srv(3, 9001, "a.test."), srv(0, 9002, "b.test.")])
        .await;
    let target = DnsTarget::srv("_grpc._tcp.test.")
        .with_server(dns.addr)
        .with_ttl_bounds(Duration::from_millis(100), Duration::from_secs(60));
    let mut source = Source::dns(target);
    assert_eq!(changes(&mut source, 2).await, ["+10.0.3.1:9001/3", "+10.0.3.2:9002/1"]);
    dns.set("_grpc._tcp.test.", RecordType::SRV, vec![srv(3, 9001, "a.test."), srv(1, 9003, "b.test.")])
        .await;
    assert_eq!(changes(&mut source, 2).await, ["+10.0.3.2:9003/1", "-10.0.3.2:9002"]);
}

#[tokio::test]
async fn dns_server_failure_keeps_the_last_set_and_is_reported_once() {
    let mut dns = DnsServer::start().await;
    dns.set_a("llm.test.", 1, &[[10, 0, 4, 1]]).await;
    let target = DnsTarget::a("llm.test.", 1)
        .with_server(dns.addr)
        .with_ttl_bounds(Duration::from_millis(100), Duration::from_millis(200));
    let mut source = Source::dns(target);
    assert_eq!(changes(&mut source, 1).await, ["+10.0.4.1:1/1"]);
    drop(dns);
    let error =
        tokio::time::timeout(Duration::from_secs(30), source.next()).await.unwrap().unwrap().unwrap_err();
    assert!(matches!(error, DiscoveryError::Backend { .. }), "{error}");
    // The server is gone: nothing removed, and no error item for every retry.
    quiet(&mut source, Duration::from_secs(3)).await;
}
