//! Metric names and units: the OpenTelemetry RPC conventions (`rpc.server.duration`, in seconds,
//! `rpc.server.request.size` and `rpc.server.response.size` in bytes, ...) mapped to Prometheus names the usual way (dots to
//! underscores, the unit as a suffix, `_total` on counters), and Switchyard's per-endpoint and
//! per-pool series under `switchyard_`.

/// Label: the RPC system, always `grpc` (`rpc.system`).
pub const RPC_SYSTEM: &str = "rpc_system";
/// Label: the gRPC service, `package.Service` (`rpc.service`).
pub const RPC_SERVICE: &str = "rpc_service";
/// Label: the gRPC method (`rpc.method`).
pub const RPC_METHOD: &str = "rpc_method";
/// Label: the numeric gRPC status code (`rpc.grpc.status_code`).
pub const RPC_GRPC_STATUS_CODE: &str = "rpc_grpc_status_code";
/// Label: a gateway pool (a balancer's name).
pub const POOL: &str = "pool";
/// Label: an endpoint's id.
pub const ENDPOINT: &str = "endpoint";
/// Label: which of a pool's layers a series is of (its position in the pool's `layers` list,
/// 0 the outermost), so that two layers of one kind in a pool keep apart.
pub const LAYER: &str = "layer";

/// Histogram, seconds: an RPC served, from its request's headers to the end of its response
/// (its trailers); its `_count` is the number of RPCs per service, method and status.
pub const RPC_SERVER_DURATION: &str = "rpc_server_duration_seconds";
/// Histogram, seconds: an RPC sent, from its request to the end of its response.
pub const RPC_CLIENT_DURATION: &str = "rpc_client_duration_seconds";
/// Gauge: RPCs being served.
pub const RPC_SERVER_ACTIVE: &str = "rpc_server_active_requests";
/// Gauge: RPCs sent and not yet ended.
pub const RPC_CLIENT_ACTIVE: &str = "rpc_client_active_requests";
/// Histogram, bytes: the response body of an RPC served (every message, framed).
pub const RPC_SERVER_RESPONSE_SIZE: &str = "rpc_server_response_size_bytes";
/// Histogram, bytes: the response body of an RPC sent.
pub const RPC_CLIENT_RESPONSE_SIZE: &str = "rpc_client_response_size_bytes";
/// Histogram, bytes: the request body of an RPC served (every message, framed), recorded when
/// the body ends (`rpc.server.request.size`).
pub const RPC_SERVER_REQUEST_SIZE: &str = "rpc_server_request_size_bytes";
/// Histogram, bytes: the request body of an RPC sent (`rpc.client.request.size`).
pub const RPC_CLIENT_REQUEST_SIZE: &str = "rpc_client_request_size_bytes";

/// Counter: requests the balancer sent to an endpoint (every pick, ended or not).
pub const ENDPOINT_PICKS: &str = "switchyard_endpoint_picks_total";
/// Counter: requests ended on an endpoint, by `outcome` (`ok`, `failed`, `overloaded`,
/// `cancelled`).
pub const ENDPOINT_REQUESTS: &str = "switchyard_endpoint_requests_total";
/// Gauge: requests in flight on an endpoint.
pub const ENDPOINT_IN_FLIGHT: &str = "switchyard_endpoint_in_flight_requests";
/// Gauge, seconds: an endpoint's peak-EWMA latency (absent before its first answer).
pub const ENDPOINT_LATENCY_EWMA: &str = "switchyard_endpoint_latency_ewma_seconds";
/// Gauge: the queue depth the endpoint's replica last reported (ORCA).
pub const ENDPOINT_QUEUE: &str = "switchyard_endpoint_reported_queue_depth";
/// Gauge: the requests running on the endpoint's replica, as it last reported.
pub const ENDPOINT_RUNNING: &str = "switchyard_endpoint_reported_running_requests";
/// Gauge, 0 to 1: the KV-cache use the endpoint's replica last reported.
pub const ENDPOINT_KV_CACHE: &str = "switchyard_endpoint_reported_kv_cache_utilization_ratio";
/// Gauge, 0 or 1: whether outlier detection has the endpoint ejected now.
pub const ENDPOINT_EJECTED: &str = "switchyard_endpoint_ejected";
/// Counter: how many times outlier detection ejected the endpoint.
pub const ENDPOINT_EJECTIONS: &str = "switchyard_endpoint_ejections_total";
/// Gauge, 0 or 1: whether the endpoint is draining (removed, its last requests running).
pub const ENDPOINT_DRAINING: &str = "switchyard_endpoint_draining";
/// Histogram, seconds: requests on an endpoint, from the pick to the end of the response, by
/// `outcome` (the balancer's observer).
pub const ENDPOINT_DURATION: &str = "switchyard_endpoint_duration_seconds";
/// Histogram, seconds: from the pick to the first byte of the response (a stream's time to first
/// token), per endpoint.
pub const ENDPOINT_FIRST_BYTE: &str = "switchyard_endpoint_time_to_first_byte_seconds";
/// Gauge, 1 for the policy a pool uses now (label `policy`), 0 for one it used before.
pub const POOL_POLICY: &str = "switchyard_pool_policy_info";
/// Gauge: endpoints on a pool's board.
pub const POOL_ENDPOINTS: &str = "switchyard_pool_endpoints";

/// Gauge: the concurrency limit in force over a pool (its `limit` layer), `{pool}` (and
/// `layer` in a gateway: the layer's position in the pool's list; the same for the pool's other
/// limit and shed series).
pub const POOL_LIMIT: &str = "switchyard_pool_concurrency_limit";
/// Gauge: requests holding a place of the pool's limit, `{pool}`.
pub const POOL_LIMIT_IN_FLIGHT: &str = "switchyard_pool_limit_in_flight_requests";
/// Counter: requests the pool's limit let through, `{pool}`.
pub const POOL_LIMIT_ADMITTED: &str = "switchyard_pool_limit_admitted_total";
/// Counter: requests that fed the pool's limit algorithm as drops (overload seen), `{pool}`.
pub const POOL_LIMIT_DROPPED: &str = "switchyard_pool_limit_dropped_total";
/// Counter: calls a pool's retry layer took, `{pool}`.
pub const POOL_RETRY_CALLS: &str = "switchyard_pool_retry_calls_total";
/// Counter: attempts a pool's retry layer made after a call's first (the requests retries added
/// upstream), `{pool}`.
pub const POOL_RETRIES: &str = "switchyard_pool_retries_total";
/// Counter: hedges a pool's retry layer sent (attempts racing a slow first one), `{pool}`.
pub const POOL_HEDGES: &str = "switchyard_pool_hedges_total";
/// Counter: responses a pool's retry layer held to their trailers (`hold_responses`) that were
/// cut before their end, each retried instead of reaching the client broken, `{pool}`.
pub const POOL_RETRY_HELD_CUT: &str = "switchyard_pool_retry_held_cut_total";
/// Counter: retries a pool's retry budget refused, `{pool}`.
pub const POOL_RETRY_BUDGET_EXHAUSTED: &str = "switchyard_pool_retry_budget_exhausted_total";
/// Gauge: the concurrency limit in force on an endpoint (the balancer's per-endpoint limit),
/// `{pool, endpoint}`.
pub const ENDPOINT_LIMIT: &str = "switchyard_endpoint_concurrency_limit";
/// Gauge: how many requests an endpoint serves at once before a new one waits (its slots), as
/// the balancer learnt it from the endpoint's answers, `{pool, endpoint}`.
pub const ENDPOINT_SLOTS: &str = "switchyard_endpoint_slots";
/// Gauge, seconds: an endpoint's no-load time per unit of work before a first byte (per prompt
/// token, or per request when requests carry no size), as the balancer learnt it,
/// `{pool, endpoint}` (absent before its first answer sent with nothing ahead).
pub const ENDPOINT_IDLE_UNIT_TIME: &str = "switchyard_endpoint_idle_unit_time_seconds";
/// Gauge: requests in flight on an endpoint still waiting for their first byte,
/// `{pool, endpoint}` (what an autoscaler reads as work queued in front of the replica).
pub const ENDPOINT_AWAITING_FIRST_BYTE: &str = "switchyard_endpoint_awaiting_first_byte_requests";
/// Gauge: the work (prompt tokens, or one per request without sizes) of the requests waiting for
/// their first byte on an endpoint, `{pool, endpoint}`.
pub const ENDPOINT_PENDING_WORK: &str = "switchyard_endpoint_pending_work";
/// Counter: the work (prompt tokens, or one per request without sizes) of every request the
/// balancer started on an endpoint, `{pool, endpoint}`: its `rate()` is the work a second the pool
/// is asked to do, whatever the pool's size (what an autoscaler sizes the pool from).
pub const ENDPOINT_STARTED_WORK: &str = "switchyard_endpoint_started_work_total";
/// Gauge, seconds: how long ago the endpoint's replica sent the load report its `reported_*`
/// series show, `{pool, endpoint}` (absent before the first report).
pub const ENDPOINT_REPORT_AGE: &str = "switchyard_endpoint_report_age_seconds";
/// Gauge: requests waiting in a pool's shed queue, `{pool}`.
pub const SHED_WAITING: &str = "switchyard_shed_queue_waiting_requests";
/// Gauge: 1 while a pool's shed queue is overloaded (waits above its target for an interval),
/// `{pool}`.
pub const SHED_OVERLOADED: &str = "switchyard_shed_overloaded";
/// Counter: requests a pool's shed queue passed on, `{pool, class}`.
pub const SHED_ADMITTED: &str = "switchyard_shed_admitted_total";
/// Counter: requests a pool's shed queue refused, `{pool, reason, class}`.
pub const SHED_REFUSED: &str = "switchyard_shed_refused_total";
