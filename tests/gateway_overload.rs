#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A gateway pool with the `shed` and `limit` layers over real loopback gRPC: past its limit and
//! its queue it refuses with `RESOURCE_EXHAUSTED` and a pushback; what it serves passes. A pool
//! with a limit per endpoint holds each endpoint to it, and shows it on the board and the admin
//! API.

use switchyard::gateway::{Gateway, GatewayConfig};
use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::worker::{self, WorkerArgs};
use tokio::net::TcpListener;
use tonic::transport::Channel;

/// A worker of `speed` serving on a free loopback port; its address.
async fn worker(speed: f64) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let args = WorkerArgs { speed, ..WorkerArgs::default() };
    tokio::spawn(worker::serve(args, listener, std::future::pending()));
    addr
}

#[tokio::test]
async fn a_pool_with_shed_and_limit_layers_refuses_what_it_cannot_hold() {
    let worker_addr = worker(0.2).await;

    let config = GatewayConfig::from_toml(&format!(
        r#"
        [[pool]]
        name = "llama"
        layers = [
          {{ name = "shed", max_queue = 1, target = "50ms", interval = "500ms" }},
          {{ name = "limit", algorithm = {{ name = "fixed", limit = 1 }} }},
        ]
        endpoints = [{{ address = "http://{worker_addr}" }}]
        "#
    ))
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = Gateway::start(config, listener, Some(admin)).unwrap();

    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    let mut calls = Vec::new();
    for i in 0..5 {
        let mut client = GrpcInferenceServiceClient::new(channel.clone());
        let request = worker::request::text_request("sim-llm", "hello there", 24);
        calls.push(tokio::spawn(async move {
            if i > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            client.model_infer(request).await
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                assert_eq!(status.message(), "pool \"llama\": request shed to protect the others");
                assert!(status.metadata().get("grpc-retry-pushback-ms").is_some(), "{status:?}");
                refused += 1;
            }
        }
    }
    assert_eq!((ok, refused), (2, 3), "one served, one queued then served, three refused");

    // The admin API shows the pool's layers, outermost first: the queue's refusals and the
    // limit in force.
    let answer = admin_get(gateway.admin_addr().unwrap(), "/endpoints").await;
    let body: serde_json::Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let layers = &body["pools"][0]["layers"];
    assert_eq!(layers[0]["layer"], "shed", "{body}");
    assert_eq!(
        (layers[0]["admitted"].as_f64(), layers[0]["refused"].as_f64()),
        (Some(2.0), Some(3.0)),
        "{body}"
    );
    assert_eq!(layers[1]["layer"], "limit", "{body}");
    assert_eq!(layers[1]["algorithm"], "fixed", "{body}");
    assert_eq!(layers[1]["limit"].as_f64(), Some(1.0), "{body}");
}

#[tokio::test]
async fn a_pool_with_load_shed_in_front_of_its_limit_refuses_at_once_what_finds_it_full() {
    let worker_addr = worker(0.2).await;
    let config = GatewayConfig::from_toml(&format!(
        r#"
        [[pool]]
        name = "llama"
        layers = [{{ name = "load-shed" }}, {{ name = "limit", algorithm = {{ name = "fixed", limit = 1 }} }}]
        endpoints = [{{ address = "http://{worker_addr}" }}]
        "#
    ))
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _gateway = Gateway::start(config, listener, None).unwrap();
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    let mut first = GrpcInferenceServiceClient::new(channel.clone());
    let busy = tokio::spawn(async move {
        first.model_infer(worker::request::text_request("sim-llm", "hello there", 24)).await
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let mut second = GrpcInferenceServiceClient::new(channel);
    let status = second
        .model_infer(worker::request::text_request("sim-llm", "hello there", 24))
        .await
        .expect_err("the limit is full: refused, not queued");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(!busy.is_finished(), "refused while the first call still held the limit");
    assert!(started.elapsed() < std::time::Duration::from_secs(1), "at once: {:?}", started.elapsed());
    busy.await.unwrap().expect("the first call is served");
}

/// The whole HTTP/1.1 answer of the admin API to `GET path`.
async fn admin_get(admin_addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(admin_addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {admin_addr}\r\nConnection: close\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut answer).await.unwrap();
    answer
}

#[tokio::test]
async fn a_pool_with_an_endpoint_limit_holds_each_endpoint_to_it_and_shows_it() {
    let worker_addr = worker(0.5).await;
    let config = GatewayConfig::from_toml(&format!(
        r#"
        [[pool]]
        name = "llama"
        endpoint_limit = {{ name = "fixed", limit = 1 }}
        endpoints = [{{ address = "http://{worker_addr}" }}]
        "#
    ))
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = Gateway::start(config, listener, Some(admin)).unwrap();

    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let mut client = GrpcInferenceServiceClient::new(channel.clone());
            let request = worker::request::text_request("sim-llm", "hello there", 16);
            tokio::spawn(async move { client.model_infer(request).await })
        })
        .collect();
    let board = gateway.pool("llama").unwrap().board();
    let mut most = 0;
    while !calls.iter().all(tokio::task::JoinHandle::is_finished) {
        for entry in board.snapshot() {
            assert_eq!(entry.load.limit, Some(1));
            most = most.max(entry.load.in_flight);
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    for call in calls {
        call.await.unwrap().expect("each waits its turn at the endpoint");
    }
    assert_eq!(most, 1, "never more than the limit in flight on the endpoint");

    // The admin API shows the limit in force.
    let answer = admin_get(gateway.admin_addr().unwrap(), "/endpoints").await;
    assert!(answer.contains("\"limit\":1"), "{answer}");
    // And the capacity the balancer learnt: one slot (an LLM engine), and the no-load time per
    // unit of work, known since the first request went out with nothing ahead of it.
    assert!(answer.contains("\"slots\":1"), "{answer}");
    assert!(
        answer.contains("\"idle_unit_time_ms\":") && !answer.contains("\"idle_unit_time_ms\":null"),
        "{answer}"
    );
}

#[test]
fn bad_layer_parameters_name_the_layer_and_field() {
    for (layers, expected) in [
        (r#"{ name = "shed", max_queue = 0 }"#, "`max_queue` must be at least 1"),
        (r#"{ name = "shed", target = "soon" }"#, "`target`"),
        (r#"{ name = "shed", queue = 3 }"#, "unknown field `queue`"),
        (r#"{ name = "limit", algorithm = "tcp" }"#, "unknown limit algorithm"),
        (r#"{ name = "limit", algorithm = { name = "vegas", gamma = 3 } }"#, "unknown field `gamma`"),
        (r#"{ name = "limit", pace = { min_tokens = 1 } }"#, "`pace` needs `min_tokens` ≥ 2"),
        (r#"{ name = "limit", pace = { tpot = "100ms" } }"#, "unknown field `tpot`"),
        (r#"{ name = "load-shed", limit = 3 }"#, "unknown field `limit`"),
    ] {
        let text = format!(
            "[[pool]]\nname = \"p\"\nlayers = [{layers}]\nendpoints = [{{ address = \"http://127.0.0.1:1\" }}]\n"
        );
        let err = GatewayConfig::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("pool[0].layers[0]") && err.contains(expected), "{layers}: {err}");
    }
    for pace in ["{}", "{ min_tokens = 8, tpot_objective_ms = 50 }"] {
        let text = format!(
            "[[pool]]\nname = \"p\"\nlayers = [{{ name = \"limit\", algorithm = \"aimd\", pace = {pace} }}]\nendpoints = [{{ address = \"http://127.0.0.1:1\" }}]\n"
        );
        GatewayConfig::from_toml(&text).unwrap();
    }
    let text = "[[pool]]\nname = \"p\"\nendpoint_limit = \"tcp\"\nendpoints = [{ address = \"http://127.0.0.1:1\" }]\n";
    let err = GatewayConfig::from_toml(text).unwrap_err().to_string();
    assert!(err.contains("pool[0].endpoint_limit") && err.contains("line 3"), "{err}");
}

#[tokio::test]
async fn a_pool_with_load_reports_hears_a_workers_load_that_another_client_sent() {
    // A slow worker, and a client that calls it directly: the gateway sends it nothing.
    let worker_addr = worker(0.2).await;
    let config = GatewayConfig::from_toml(&format!(
        r#"
        [[pool]]
        name = "llama"
        load_reports = "20ms"
        endpoints = [{{ id = "w", address = "http://{worker_addr}" }}]
        "#
    ))
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = Gateway::start(config, listener, None).unwrap();
    let board = gateway.pool("llama").unwrap().board().clone();
    let id = switchyard_core::EndpointId::from("w");

    let channel = Channel::from_shared(format!("http://{worker_addr}")).unwrap().connect_lazy();
    let mut direct = GrpcInferenceServiceClient::new(channel);
    let request = worker::request::text_request("sim-llm", "a long answer please", 200);
    let call = tokio::spawn(async move { direct.model_infer(request).await });

    // The pool's board shows the worker running that call, though no response went through it.
    let start = std::time::Instant::now();
    loop {
        let running = board.state(&id).and_then(|s| s.report()).map(|(r, _)| r.running);
        if running == Some(1) {
            break;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(5), "no report of the call: {running:?}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let state = board.state(&id).unwrap();
    assert_eq!(state.in_flight(), 0, "the gateway sent it nothing");
    // The reports keep coming, each newer than the last.
    let (_, first_at) = state.report().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (_, later_at) = state.report().unwrap();
    assert!(later_at > first_at, "a newer report 200 ms on");
    call.await.unwrap().expect("the direct call is served");
    drop(gateway);
}
