//! Endpoints: the replicas a balancer can send requests to.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// The stable name of an endpoint, unique within one balancer.
///
/// Discovery sources choose it (an address, a pod name, a config key); the balancer, the
/// `LoadBoard` and the admin API key on it (and the coming autoscaler and metrics will). Cloning is
/// cheap.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct EndpointId(Arc<str>);

impl EndpointId {
    /// An id from any string.
    pub fn new(id: impl AsRef<str>) -> Self {
        Self(Arc::from(id.as_ref()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl From<&str> for EndpointId {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for EndpointId {
    fn from(s: String) -> Self {
        Self(Arc::from(s))
    }
}

impl AsRef<str> for EndpointId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A replica that can serve requests, as discovery describes it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Endpoint {
    /// Stable name, unique within one balancer.
    pub id: EndpointId,
    /// Where to connect: a URI such as `http://10.0.0.7:9001`.
    pub address: String,
    /// Relative share for weighted policies; `1` unless configured. A weight of `0` receives no
    /// traffic from weighted policies.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Free-form labels from discovery (zone, pod name, model), sorted by key.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn default_weight() -> u32 {
    1
}

impl Endpoint {
    /// An endpoint with weight 1 and no labels.
    pub fn new(id: impl Into<EndpointId>, address: impl Into<String>) -> Self {
        Self { id: id.into(), address: address.into(), weight: 1, labels: BTreeMap::new() }
    }

    /// The same endpoint with another weight.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// The same endpoint with one more label.
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_compare_by_value_and_print_plainly() {
        let a = EndpointId::new("a");
        assert_eq!(a, EndpointId::from("a".to_string()));
        assert!(EndpointId::new("a") < EndpointId::new("b"));
        assert_eq!(a.to_string(), "a");
        assert_eq!(format!("{a:?}"), "\"a\"");
    }

    #[test]
    fn endpoint_defaults_to_weight_one() {
        let e = Endpoint::new("r0", "http://127.0.0.1:1").with_label("zone", "a");
        assert_eq!(e.weight, 1);
        assert_eq!(e.labels.get("zone").map(String::as_str), Some("a"));
    }
}
