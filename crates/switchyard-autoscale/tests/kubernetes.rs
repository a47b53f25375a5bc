//! The Kubernetes scaler against kube's mock service (`tower_test::mock`, as kube's own tests
//! do): no API server runs here, so the mock checks each request the scaler sends (method, path,
//! patch type and body) and answers in the API server's format.
#![cfg(feature = "kubernetes")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::pin::pin;

use http::{Method, Request, Response};
use http_body_util::BodyExt;
use kube::client::Body;
use switchyard_autoscale::scaler::Scaler;
use switchyard_autoscale::scaler::kubernetes::{KubernetesScaler, Workload};
use switchyard_autoscale::{PoolSize, Resources};

/// A `Scale` of `apps/v1` as the API server answers it.
fn scale(kind: &str, name: &str, spec: u32, status: u32) -> String {
    serde_json::json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": { "name": name, "namespace": "serving", "uid": "0b4c7f4e-1b8e-4d53-9d6e-2f9a0c1d2e3f",
                      "resourceVersion": "48213", "creationTimestamp": "2026-11-30T18:00:00Z" },
        "spec": { "replicas": spec },
        "status": { "replicas": status, "selector": format!("app.kubernetes.io/name={kind}") }
    })
    .to_string()
}

/// One request the scaler sent: its method, path and query, content type and body.
struct Seen {
    method: Method,
    uri: String,
    content_type: Option<String>,
    body: serde_json::Value,
}

async fn seen(request: Request<Body>) -> Seen {
    let (parts, body) = request.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    Seen {
        method: parts.method,
        uri: parts.uri.path().to_string(),
        content_type: parts.headers.get(http::header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string()),
        body: if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        },
    }
}

#[tokio::test]
async fn the_scaler_patches_the_deployments_scale_subresource_and_reads_the_sizes_back() {
    let (mock, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<Seen>();
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        let answers = [
            scale("worker", "worker", 2, 2),
            // The Deployment's status: two replicas, one ready.
            serde_json::json!({
                "kind": "Deployment", "apiVersion": "apps/v1",
                "metadata": { "name": "worker", "namespace": "serving" },
                "spec": { "replicas": 2, "selector": { "matchLabels": { "app": "worker" } },
                          "template": { "metadata": { "labels": { "app": "worker" } },
                                        "spec": { "containers": [{ "name": "worker", "image": "switchyard:0.1.0" }] } } },
                "status": { "replicas": 2, "readyReplicas": 1, "updatedReplicas": 2, "availableReplicas": 1 }
            })
            .to_string(),
            // After the patch: 5 desired, the controller has not created the pods yet.
            scale("worker", "worker", 5, 2),
        ];
        for answer in answers {
            let (request, send) = handle.next_request().await.expect("a request");
            seen_tx.send(seen(request).await).unwrap();
            send.send_response(Response::new(Body::from(answer.into_bytes())));
        }
    });
    let client = kube::Client::new(mock, "default");
    let mut scaler = KubernetesScaler::new(client, "serving", Workload::Deployment, "worker");

    assert_eq!(scaler.refresh().await.unwrap(), PoolSize { desired: 2, current: 2, ready: 1 });
    let get_scale = seen_rx.recv().await.unwrap();
    assert_eq!(get_scale.method, Method::GET);
    assert_eq!(get_scale.uri, "/apis/apps/v1/namespaces/serving/deployments/worker/scale");
    let get = seen_rx.recv().await.unwrap();
    assert_eq!(
        (get.method, get.uri.as_str()),
        (Method::GET, "/apis/apps/v1/namespaces/serving/deployments/worker")
    );

    scaler.set_desired(5).await.unwrap();
    let patch = seen_rx.recv().await.unwrap();
    assert_eq!(patch.method, Method::PATCH);
    assert!(
        patch.uri.starts_with("/apis/apps/v1/namespaces/serving/deployments/worker/scale"),
        "{}",
        patch.uri
    );
    assert_eq!(patch.content_type.as_deref(), Some("application/merge-patch+json"));
    assert_eq!(patch.body, serde_json::json!({ "spec": { "replicas": 5 } }));
    // What the API server answered: 5 desired, still 2 pods, of which 1 was ready.
    assert_eq!(scaler.size(), PoolSize { desired: 5, current: 2, ready: 1 });
    server.await.unwrap();
}

#[tokio::test]
async fn a_statefulset_is_scaled_through_its_own_path_and_a_refusal_is_an_error_naming_it() {
    let (mock, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        let (request, send) = handle.next_request().await.expect("a request");
        assert_eq!(request.method(), Method::PATCH);
        assert!(
            request.uri().path() == "/apis/apps/v1/namespaces/serving/statefulsets/engine/scale",
            "{}",
            request.uri()
        );
        // The service account lacks the RBAC rule: the API server's 403 Status.
        let status = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "statefulsets.apps \"engine\" is forbidden: User \"system:serviceaccount:serving:gateway\" cannot patch resource \"statefulsets/scale\" in API group \"apps\" in the namespace \"serving\"",
            "reason": "Forbidden", "details": { "name": "engine", "group": "apps", "kind": "statefulsets" }, "code": 403
        });
        let mut response = Response::new(Body::from(status.to_string().into_bytes()));
        *response.status_mut() = http::StatusCode::FORBIDDEN;
        send.send_response(response);
    });
    let client = kube::Client::new(mock, "default");
    let mut scaler = KubernetesScaler::new(client, "serving", Workload::StatefulSet, "engine");
    let error = scaler.set_desired(3).await.unwrap_err().to_string();
    assert!(error.contains("statefulset \"engine\"") && error.contains("forbidden"), "{error}");
    assert_eq!(scaler.size(), PoolSize::default(), "nothing changed");
    server.await.unwrap();
}

/// A pod of the worker Deployment in `phase`, terminating if `deleting`.
fn pod(name: &str, phase: &str, deleting: bool) -> serde_json::Value {
    let mut metadata = serde_json::json!({
        "name": name, "namespace": "serving", "labels": { "app.kubernetes.io/name": "worker" }
    });
    if deleting {
        metadata["deletionTimestamp"] = "2026-11-30T18:05:00Z".into();
    }
    serde_json::json!({
        "kind": "Pod", "apiVersion": "v1", "metadata": metadata,
        "spec": { "containers": [{ "name": "worker", "image": "switchyard:0.1.0",
                  "resources": { "requests": { "cpu": "500m", "memory": "256Mi" } } }] },
        "status": { "phase": phase }
    })
}

#[tokio::test]
async fn a_vertical_recommendation_resizes_each_running_pod_in_place_through_its_resize_subresource() {
    let (mock, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(Seen, Option<String>)>();
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        let deployment = serde_json::json!({
            "kind": "Deployment", "apiVersion": "apps/v1",
            "metadata": { "name": "worker", "namespace": "serving" },
            "spec": { "replicas": 3, "selector": { "matchLabels": { "app.kubernetes.io/name": "worker" } },
                      "template": { "metadata": { "labels": { "app.kubernetes.io/name": "worker" } },
                                    "spec": { "containers": [{ "name": "worker", "image": "switchyard:0.1.0" }] } } },
            "status": { "replicas": 3, "readyReplicas": 2 }
        });
        let list = serde_json::json!({
            "kind": "PodList", "apiVersion": "v1", "metadata": { "resourceVersion": "48300" },
            "items": [pod("worker-a", "Running", false), pod("worker-b", "Pending", false),
                      pod("worker-c", "Running", true), pod("worker-d", "Running", false)]
        });
        let answers = [
            scale("worker", "worker", 3, 3),
            deployment.to_string(),
            list.to_string(),
            pod("worker-a", "Running", false).to_string(),
            pod("worker-d", "Running", false).to_string(),
        ];
        for answer in answers {
            let (request, send) = handle.next_request().await.expect("a request");
            let query = request.uri().query().map(str::to_string);
            seen_tx.send((seen(request).await, query)).unwrap();
            send.send_response(Response::new(Body::from(answer.into_bytes())));
        }
    });
    let client = kube::Client::new(mock, "default");
    let mut scaler = KubernetesScaler::new(client, "serving", Workload::Deployment, "worker");

    let resized = scaler.set_resources(Resources::new(750, 384)).await.unwrap();
    assert_eq!(resized, 2, "the two running pods; not the pending one, not the terminating one");
    // The selector comes from the Deployment's scale.
    let (get_scale, _) = seen_rx.recv().await.unwrap();
    assert_eq!(get_scale.uri, "/apis/apps/v1/namespaces/serving/deployments/worker/scale");
    let _deployment = seen_rx.recv().await.unwrap();
    let (list, query) = seen_rx.recv().await.unwrap();
    assert_eq!((list.method, list.uri.as_str()), (Method::GET, "/api/v1/namespaces/serving/pods"));
    assert!(
        query.as_deref().is_some_and(|q| q.contains("labelSelector=app.kubernetes.io%2Fname%3Dworker")),
        "{query:?}"
    );
    for name in ["worker-a", "worker-d"] {
        let (patch, _) = seen_rx.recv().await.unwrap();
        assert_eq!(patch.method, Method::PATCH);
        assert_eq!(patch.uri, format!("/api/v1/namespaces/serving/pods/{name}/resize"));
        assert_eq!(patch.content_type.as_deref(), Some("application/strategic-merge-patch+json"));
        assert_eq!(
            patch.body,
            serde_json::json!({ "spec": { "containers": [{
                "name": "worker",
                "resources": { "requests": { "cpu": "750m", "memory": "384Mi" } }
            }] } })
        );
    }
    server.await.unwrap();
}
