//! Algorithms by name, as configs write them.

use switchyard_core::{Spec, SpecError};

use crate::{Aimd, EnvoyGradient, Fixed, Gradient2, LimitAlgorithm, Vegas, Windowed, WindowedParams};

/// The names [`algorithm_from_spec`] knows.
pub const ALGORITHMS: [&str; 6] = ["fixed", "aimd", "gradient2", "vegas", "envoy-gradient", "windowed"];

/// Builds the algorithm a spec names, with its parameters: `"vegas"`,
/// `{ name = "gradient2", min_limit = 4 }`, `{ name = "fixed", limit = 32 }`, or another fed by
/// windows: `{ name = "windowed", algorithm = "vegas", min_window_ms = 500 }`. A misspelt
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
        "windowed" => {
            let mut params = spec.raw_params().clone();
            let inner = match params.remove("algorithm") {
                Some(value) => serde_json::from_value::<Spec>(value).map_err(|e| SpecError {
                    name: spec.name().into(),
                    message: format!("`algorithm`: {e}"),
                })?,
                None => {
                    return Err(SpecError {
                        name: spec.name().into(),
                        message: "needs an `algorithm`".into(),
                    });
                }
            };
            if inner.name() == "windowed" {
                return Err(SpecError { name: spec.name().into(), message: "cannot window itself".into() });
            }
            let window: WindowedParams = Spec::with_params(spec.name(), params).params()?;
            Box::new(Windowed::new(algorithm_from_spec(&inner)?, window))
        }
        other => {
            return Err(SpecError {
                name: other.into(),
                message: format!("unknown limit algorithm; expected one of: {}", ALGORITHMS.join(", ")),
            });
        }
    })
}
