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
use switchyard_core::{Error, ErrorKind};

use super::body::{RequestBody, RequestFrames};
use super::config::GatewayConfig;
use super::peek::{MAX_PEEK_BYTES, peek_model};

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
    ) -> Result<(usize, http::Request<RequestBody>), Error> {
        if self.routes.is_empty() {
            // The common case, with no lookup at all.
            return match self.default {
                Some(pool) => Ok((pool, req.map(RequestBody::untouched))),
                None => Err(no_route(req.uri().path(), None)),
            };
        }
        let (parts, body) = req.into_parts();
        let mut body = RequestBody::untouched(body);
        let mut model: Option<Option<String>> = None;
        let path = parts.uri.path();
        for route in self.routes.iter() {
            if route.path_prefix.as_deref().is_some_and(|prefix| !path.starts_with(prefix)) {
                continue;
            }
            if let Some(wanted) = route.model.as_deref() {
                if model.is_none() {
                    let (found, peeked) = self.model_of(&parts, body).await;
                    model = Some(found);
                    body = peeked;
                }
                if model.as_ref().and_then(Option::as_deref) != Some(wanted) {
                    continue;
                }
            }
            return Ok((route.pool, http::Request::from_parts(parts, body)));
        }
        match self.default {
            Some(pool) => Ok((pool, http::Request::from_parts(parts, body))),
            None => Err(no_route(path, model.flatten().as_deref())),
        }
    }

    /// The request's model, and its body (with the frames read to find it put back, if any).
    async fn model_of(
        &self,
        parts: &http::request::Parts,
        body: RequestBody,
    ) -> (Option<String>, RequestBody) {
        if let Some(value) = parts.headers.get(&self.model_header) {
            return (value.to_str().ok().map(str::to_owned), body);
        }
        if !parts.uri.path().starts_with(KSERVE_MODEL_METHODS) {
            return (None, body);
        }
        match body.0 {
            RequestFrames::Untouched(incoming) => {
                let (model, replay) = peek_model(incoming, MAX_PEEK_BYTES).await;
                (model, RequestBody(RequestFrames::Peeked(replay)))
            }
            // Read once already: the first look found nothing.
            peeked @ RequestFrames::Peeked(_) => (None, RequestBody(peeked)),
        }
    }
}

fn no_route(path: &str, model: Option<&str>) -> Error {
    let why = match model {
        Some(model) => format!("for {path} and model {model:?}"),
        None => format!("for {path} (no model named)"),
    };
    Error::new(ErrorKind::NoRoute(why.into()))
}
