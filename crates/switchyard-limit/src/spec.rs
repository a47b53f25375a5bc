//! Algorithms by name, as configs write them.

use switchyard_core::{Spec, SpecError};

use crate::{Aimd, EnvoyGradient, Fixed, Gradient2, LimitAlgorithm, Vegas};

/// The names [`algorithm_from_spec`] knows.
pub const ALGORITHMS: [&str; 5] = ["fixed", "aimd", "gradient2", "vegas", "envoy-gradient"];

/// Builds the algorithm a spec names, with its parameters: `"vegas"`,
/// `{ name = "gradient2", min_limit = 4 }`, `{ name = "fixed", limit = 32 }`. A misspelt
/// parameter is an error naming the known ones.
///
/// ```
/// use switchyard_core::Spec;
/// let spec: Spec = serde_json::from_str(r#"{"name": "aimd", "initial_limit": 30}"#).unwrap();
/// let aimd = switchyard_limit::algorithm_from_spec(&spec).unwrap();
/// assert_eq!((aimd.name(), aimd.limit()), ("aimd", 30));
/// assert!(switchyard_limit::algorithm_from_spec(&Spec::named("fixed")).is_err(), "fixed needs its limit");
/// ```
pub fn algorithm_from_spec(spec: &Spec) -> Result<Box<dyn LimitAlgorithm>, SpecError> {
    Ok(match spec.name() {
        "fixed" => {
            let fixed: Fixed = spec.params()?;
            if fixed.limit == 0 {
                return Err(SpecError {
                    name: spec.name().into(),
                    message: "`limit` must be at least 1".into(),
                });
            }
            Box::new(fixed)
        }
        "aimd" => Box::new(Aimd::new(spec.params()?)),
        "gradient2" => Box::new(Gradient2::new(spec.params()?)),
        "vegas" => Box::new(Vegas::new(spec.params()?)),
        "envoy-gradient" => Box::new(EnvoyGradient::new(spec.params()?)),
        other => {
            return Err(SpecError {
                name: other.into(),
                message: format!("unknown limit algorithm; expected one of: {}", ALGORITHMS.join(", ")),
            });
        }
    })
}
