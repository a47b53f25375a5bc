//! The policy registry: policies by name, for config files, the admin API and the lab.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use super::{Policy, PolicyKind, PolicySpec};

/// Builds a policy from its spec and a seed for its random choices.
pub type PolicyFactory = Arc<dyn Fn(&PolicySpec, u64) -> Result<Arc<dyn Policy>, PolicyError> + Send + Sync>;

impl From<switchyard_core::SpecError> for PolicyError {
    fn from(e: switchyard_core::SpecError) -> Self {
        PolicyError::InvalidParams { name: e.name, message: e.message }
    }
}

/// Why a policy could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// No policy of that name is registered.
    #[error("unknown policy {name:?}; expected one of: {}", known.join(", "))]
    Unknown {
        /// The name asked for.
        name: String,
        /// The names registered.
        known: Vec<String>,
    },
    /// The policy's parameters are wrong.
    #[error("policy {name:?}: {message}")]
    InvalidParams {
        /// The policy.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A policy of that name is registered already.
    #[error("a policy named {name:?} is registered already")]
    Duplicate {
        /// The name.
        name: String,
    },
}

struct Entry {
    description: String,
    factory: PolicyFactory,
}

/// Policies by name.
///
/// The process-wide [`registry()`] holds the built-ins ([`PolicyKind::ALL`]); a crate that
/// brings policies registers them there (the hash-routing crate's `register` does), and the
/// gateway's config, its admin API and the lab build from it. Cloning gives another handle on the
/// same registry.
///
/// ```
/// use std::sync::Arc;
/// use switchyard_balance::policy::{self, Endpoints, Policy, PolicyError, PolicySpec, RequestInfo};
///
/// /// Always the n-th eligible endpoint.
/// #[derive(Debug)]
/// struct Nth(usize);
///
/// impl Policy for Nth {
///     fn name(&self) -> &'static str { "nth" }
///     fn pick(&self, _: &RequestInfo<'_>, endpoints: &Endpoints<'_>) -> Option<usize> {
///         (self.0 < endpoints.eligible().len()).then_some(self.0)
///     }
/// }
///
/// #[derive(serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct Params { n: usize }
///
/// let registry = policy::registry();
/// registry.register("nth", "always the n-th endpoint", |spec: &PolicySpec, _seed| {
///     let params: Params = spec.params()?;
///     Ok(Arc::new(Nth(params.n)) as Arc<dyn Policy>)
/// })?;
/// let spec: PolicySpec = serde_json::from_str(r#"{"name": "nth", "n": 2}"#)?;
/// assert_eq!(registry.build(&spec, 0)?.name(), "nth");
/// assert!(registry.names().contains(&"least-response-time".to_string()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct PolicyRegistry {
    entries: Arc<RwLock<BTreeMap<String, Entry>>>,
}

/// The process-wide registry, holding the built-ins from the start.
pub fn registry() -> &'static PolicyRegistry {
    static REGISTRY: OnceLock<PolicyRegistry> = OnceLock::new();
    REGISTRY.get_or_init(PolicyRegistry::with_builtins)
}

impl PolicyRegistry {
    /// A registry holding nothing.
    pub fn empty() -> Self {
        Self { entries: Arc::default() }
    }

    /// A registry holding the built-in policies ([`PolicyKind::ALL`]), which take no parameters.
    pub fn with_builtins() -> Self {
        let registry = Self::empty();
        for kind in PolicyKind::ALL {
            let factory = move |spec: &PolicySpec, seed: u64| {
                spec.no_params()?;
                Ok(kind.build(seed))
            };
            // The names of `PolicyKind::ALL` differ, so this cannot fail.
            let _ = registry.register(kind.name(), kind.description(), factory);
        }
        registry
    }

    /// Registers a policy under `name` (normalised as [`PolicySpec`] names are).
    pub fn register<F>(&self, name: &str, description: &str, factory: F) -> Result<(), PolicyError>
    where
        F: Fn(&PolicySpec, u64) -> Result<Arc<dyn Policy>, PolicyError> + Send + Sync + 'static,
    {
        let name = PolicySpec::named(name).name().to_string();
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if entries.contains_key(&name) {
            return Err(PolicyError::Duplicate { name });
        }
        entries.insert(name, Entry { description: description.to_string(), factory: Arc::new(factory) });
        Ok(())
    }

    /// Builds the policy `spec` names, with `seed` for its random choices.
    pub fn build(&self, spec: &PolicySpec, seed: u64) -> Result<Arc<dyn Policy>, PolicyError> {
        let factory = {
            let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
            match entries.get(spec.name()) {
                Some(entry) => entry.factory.clone(),
                None => {
                    return Err(PolicyError::Unknown {
                        name: spec.name().to_string(),
                        known: entries.keys().cloned().collect(),
                    });
                }
            }
        };
        factory(spec, seed)
    }

    /// Checks that `spec` builds, without keeping the policy.
    pub fn validate(&self, spec: &PolicySpec) -> Result<(), PolicyError> {
        self.build(spec, 0).map(drop)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.entries.read().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect()
    }

    /// The registered names with their descriptions, sorted by name.
    pub fn describe(&self) -> Vec<(String, String)> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        entries.iter().map(|(name, e)| (name.clone(), e.description.clone())).collect()
    }
}

impl fmt::Debug for PolicyRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PolicyRegistry").field(&self.names()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_build_by_name_and_refuse_parameters() {
        let registry = PolicyRegistry::with_builtins();
        for kind in PolicyKind::ALL {
            assert_eq!(registry.build(&kind.spec(), 1).unwrap().name(), kind.name());
        }
        let err = registry.build(&PolicySpec::named("fastest"), 0).unwrap_err().to_string();
        assert!(err.contains("\"fastest\"") && err.contains("least-connections"), "{err}");
        let spec: PolicySpec = serde_json::from_str(r#"{"name":"round-robin","x":1}"#).unwrap();
        assert!(registry.build(&spec, 0).unwrap_err().to_string().contains("`x`"));
        let dup = registry.register("Round_Robin", "again", |_, _| Ok(PolicyKind::Random.build(0)));
        assert_eq!(dup, Err(PolicyError::Duplicate { name: "round-robin".into() }));
    }
}
