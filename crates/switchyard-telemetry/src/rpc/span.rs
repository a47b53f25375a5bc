//! One span per RPC, after the OpenTelemetry RPC semantic conventions, and the W3C trace context
//! in gRPC metadata.

use http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::Side;
use super::layer::RpcTelemetry;
use super::stats::split_path;
use switchyard_core::Code;

/// The span of one RPC: named `package.Service/Method`, of kind server or client, with
/// `rpc.system`, `rpc.service`, `rpc.method`, `server.address` and `server.port` set now and
/// `rpc.grpc.status_code`, `switchyard.pool` and `switchyard.endpoint` when known.
///
/// On the server side its parent is the trace context the request's `traceparent` and
/// `tracestate` carry, if any; on the client side, the current span. Either way the request
/// leaves with the new span's context in its metadata, so that the next hop (a gateway's
/// endpoint, a client's server) continues the trace from this span.
pub(crate) fn start<B>(telemetry: &RpcTelemetry, req: &mut http::Request<B>) -> tracing::Span {
    let (side, propagator) = (telemetry.side, &telemetry.propagator);
    let (service, method) = split_path(req.uri().path());
    let authority = req.uri().authority().map(|a| (a.host().to_owned(), a.port_u16())).or_else(|| {
        let host = req.headers().get(http::header::HOST)?.to_str().ok()?;
        let authority: http::uri::Authority = host.parse().ok()?;
        Some((authority.host().to_owned(), authority.port_u16()))
    });
    let authority =
        authority.or_else(|| telemetry.server.as_ref().map(|a| (a.host().to_owned(), a.port_u16())));
    let (address, port) = match authority {
        Some((host, port)) => (Some(host), port),
        None => (None, None),
    };
    let name = format!("{service}/{method}");
    let kind = match side {
        Side::Server => "server",
        Side::Client => "client",
    };
    let span = tracing::info_span!(
        "rpc",
        otel.name = name.as_str(),
        otel.kind = kind,
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        server.address = Empty,
        server.port = Empty,
        switchyard.pool = Empty,
        switchyard.endpoint = Empty,
    );
    if let Some(address) = &address {
        span.record("server.address", address.as_str());
    }
    if let Some(port) = port {
        span.record("server.port", i64::from(port));
    }
    if side == Side::Server {
        let parent = propagator.extract(&HeaderExtractor(req.headers()));
        if parent.span().span_context().is_valid() {
            // Fails only when the span is disabled (no subscriber wants it): nothing to continue.
            let _ = span.set_parent(parent);
        }
    }
    propagator.inject_context(&span.context(), &mut HeaderInjector(req.headers_mut()));
    span
}

/// Records how the RPC ended on its span.
pub(crate) fn end(side: Side, span: &tracing::Span, code: Code) {
    span.record("rpc.grpc.status_code", code.as_i32());
    // The conventions: a client marks every non-OK status an error, a server only those that
    // are its own fault.
    let error = match side {
        Side::Client => code != Code::Ok,
        Side::Server => matches!(
            code,
            Code::Unknown
                | Code::DeadlineExceeded
                | Code::Unimplemented
                | Code::Internal
                | Code::Unavailable
                | Code::DataLoss
        ),
    };
    if error {
        span.record("otel.status_code", "ERROR");
    }
}

/// Reads trace context from gRPC metadata (HTTP/2 headers).
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Writes trace context into gRPC metadata, replacing what was there.
struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::try_from(value))
        {
            self.0.insert(name, value);
        }
    }
}

/// Records the pool that serves the current RPC on its span (a gateway calls this once it has
/// routed the request). Does nothing outside an RPC span.
pub fn record_pool(pool: &str) {
    tracing::Span::current().record("switchyard.pool", pool);
}
