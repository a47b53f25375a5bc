//! A gateway for the tests that publish its endpoints themselves: its pool `default` takes them
//! from a discovery channel the test holds (the pool's static section is empty).

use switchyard::gateway::{Gateway, GatewayConfig};
use switchyard_discovery::Publisher;
use tokio::net::TcpListener;

/// The static discovery section with no endpoints that every such pool config ends with.
pub(crate) const EMPTY_STATIC: &str = "[[pool.discovery]]\nkind = \"static\"\nendpoints = []\n";

/// Starts a gateway on a loopback port from `config` (TOML with one pool, `default`), whose pool
/// takes its endpoints from a channel of `capacity` changes; returns it and the channel's
/// publisher.
pub(crate) async fn with_channel(config: &str, capacity: usize) -> (Gateway, Publisher) {
    let (publisher, source) = switchyard_discovery::channel(capacity);
    let config = GatewayConfig::from_toml(config).unwrap();
    let gateway = Gateway::start_with_sources(
        config,
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        None,
        vec![("default".into(), source)],
    )
    .unwrap();
    (gateway, publisher)
}

/// A one-thread gateway whose one pool, `default`, takes its endpoints from a channel of 64
/// changes and has no layers.
pub(crate) async fn one_pool() -> (Gateway, Publisher) {
    with_channel(&format!("threads = 1\n[[pool]]\nname = \"default\"\n{EMPTY_STATIC}"), 64).await
}
