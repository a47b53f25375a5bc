//! Routes: which pool serves a request, by its gRPC path and its model.
//!
//! Routes are tried in the order the config lists them; the first whose every condition holds
//! picks the pool, and requests no route takes go to the default pool (or are answered
//! `UNIMPLEMENTED`, naming the path and the model). The model is the request's
//! [`ModelName`] key, which the key layer (`switchyard-keys`, run once per request before
//! routing) read from the model header (`x-model-name` unless configured) or, for the KServe
//! model methods only, from the `model_name` of the first request message: routing does not read
//! the body a second time. Other methods have no model: their first field 1 is not a model name
//! (`grpc.health.v1.HealthCheckRequest.service`, for one).

use switchyard_core::{Error, ErrorKind, ModelName};

use super::config::GatewayConfig;

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
        Self { routes, default: config.default_pool().and_then(index) }
    }

    /// The pool for `req`, or the error to answer with.
    pub(crate) fn route<B>(&self, req: &http::Request<B>) -> Result<usize, Error> {
        let path = req.uri().path();
        let model = || req.extensions().get::<ModelName>().map(ModelName::as_str);
        for route in self.routes.iter() {
            if route.path_prefix.as_deref().is_some_and(|prefix| !path.starts_with(prefix)) {
                continue;
            }
            if route.model.as_deref().is_some_and(|wanted| model() != Some(wanted)) {
                continue;
            }
            return Ok(route.pool);
        }
        self.default.ok_or_else(|| no_route(path, model()))
    }
}

fn no_route(path: &str, model: Option<&str>) -> Error {
    let why = match model {
        Some(model) => format!("for {path} and model {model:?}"),
        None => format!("for {path} (no model named)"),
    };
    Error::new(ErrorKind::NoRoute(why.into()))
}
