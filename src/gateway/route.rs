//! Routes: which pool serves a request, by its gRPC path and its model.
//!
//! Routes are tried in the order the config lists them; the first whose every condition holds
//! picks the pool, and requests no route takes go to the default pool (or are answered
//! `UNIMPLEMENTED`, naming the path and the model). The model is looked up only when a route asks
//! for it, once per request: the model header (`x-model-name` unless configured) if the request
//! has it, otherwise, for the KServe model methods only, the `model_name` of the first request
//! message (see [`peek`](super::peek)). Other methods have no model: their first field 1 is not
//! a model name (`grpc.health.v1.HealthCheckRequest.service`, for one).

use http::HeaderName;
use hyper::body::Incoming;
use tonic::Status;
use tonic::body::Body;

use super::config::GatewayConfig;
use super::peek::{MAX_PEEK_BYTES, Replay, peek_model};

/// The path prefix of the KServe model methods whose first field is the model's name.
const KSERVE_MODEL_METHODS: &str = "/inference.GRPCInferenceService/Model";

#[derive(Debug)]
struct Route {
    path_prefix: Option<Box<str>>,
    model: Option<Box<str>>,
    pool: usize,
}

/// The routing table, with pools by index.
#[derive(Debug)]
pub(crate) struct Router {
    routes: Box<[Route]>,
    default: Option<usize>,
    model_header: HeaderName,
}

/// The request's body, as routing leaves it.
enum RequestBody {
    Untouched(Incoming),
    Peeked(Replay<Incoming>),
}

impl RequestBody {
    fn into_body(self) -> Body {
        match self {
            RequestBody::Untouched(b) => Body::new(b),
            RequestBody::Peeked(b) => Body::new(b),
        }
    }
}

impl Router {
    /// The routing table of a validated config.
    pub(crate) fn new(config: &GatewayConfig) -> Self {
        let index = |name: &str| config.pools.iter().position(|p| p.name == name);
        let routes = config
            .routes
            .iter()
            .filter_map(|r| {
                Some(Route {
                    path_prefix: r.path_prefix.as_deref().map(Box::from),
                    model: r.model.as_deref().map(Box::from),
                    pool: index(&r.pool)?,
                })
            })
            .collect();
        let model_header = HeaderName::from_bytes(config.model_header.as_bytes())
            .unwrap_or(HeaderName::from_static(super::config::DEFAULT_MODEL_HEADER));
        Self { routes, default: config.default_pool().and_then(index), model_header }
    }

    /// The pool for `req`, and the request ready to forward; or the status to answer with.
    pub(crate) async fn route(
        &self,
        req: http::Request<Incoming>,
    ) -> Result<(usize, http::Request<Body>), Status> {
        if self.routes.is_empty() {
            // The common case, with no lookup at all.
            return match self.default {
                Some(pool) => Ok((pool, req.map(Body::new))),
                None => Err(no_route(req.uri().path(), None)),
            };
        }
        let (parts, body) = req.into_parts();
        let mut body = Some(RequestBody::Untouched(body));
        let mut model: Option<Option<String>> = None;
        let path = parts.uri.path();
        for route in self.routes.iter() {
            if route.path_prefix.as_deref().is_some_and(|prefix| !path.starts_with(prefix)) {
                continue;
            }
            if let Some(wanted) = route.model.as_deref() {
                if model.is_none() {
                    model = Some(self.model_of(&parts, &mut body).await);
                }
                if model.as_ref().and_then(Option::as_deref) != Some(wanted) {
                    continue;
                }
            }
            return Ok((route.pool, assemble(parts, body)));
        }
        match self.default {
            Some(pool) => Ok((pool, assemble(parts, body))),
            None => Err(no_route(path, model.flatten().as_deref())),
        }
    }

    async fn model_of(&self, parts: &http::request::Parts, body: &mut Option<RequestBody>) -> Option<String> {
        if let Some(value) = parts.headers.get(&self.model_header) {
            return value.to_str().ok().map(str::to_owned);
        }
        if !parts.uri.path().starts_with(KSERVE_MODEL_METHODS) {
            return None;
        }
        match body.take() {
            Some(RequestBody::Untouched(incoming)) => {
                let (model, replay) = peek_model(incoming, MAX_PEEK_BYTES).await;
                *body = Some(RequestBody::Peeked(replay));
                model
            }
            other => {
                *body = other;
                None
            }
        }
    }
}

fn assemble(parts: http::request::Parts, body: Option<RequestBody>) -> http::Request<Body> {
    http::Request::from_parts(parts, body.map_or_else(Body::empty, RequestBody::into_body))
}

fn no_route(path: &str, model: Option<&str>) -> Status {
    match model {
        Some(model) => Status::unimplemented(format!("no route for {path} and model {model:?}")),
        None => Status::unimplemented(format!("no route for {path} (no model named)")),
    }
}
