//! Request priority classes, for the shedding layer to come (no layer sheds by priority yet).

use std::fmt;
use std::str::FromStr;

/// How much a request matters when the cluster is full.
///
/// Load shedding (to come) is to refuse `Sheddable` requests first and `Critical` ones last. The
/// names follow the Kubernetes Gateway API inference extension (`Critical`, `Standard`,
/// `Sheddable`). A request without a priority in its extensions is `Standard`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Priority {
    /// Dropped first: batch jobs, prefetches, evaluations.
    Sheddable,
    /// Ordinary interactive traffic.
    #[default]
    Standard,
    /// Shed only when nothing else is left to shed.
    Critical,
}

impl Priority {
    /// The name used in headers and config: `critical`, `standard` or `sheddable`.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Sheddable => "sheddable",
            Priority::Standard => "standard",
            Priority::Critical => "critical",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A priority name that is none of `critical`, `standard`, `sheddable`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown priority {0:?}: expected critical, standard or sheddable")]
pub struct ParsePriorityError(pub String);

impl FromStr for Priority {
    type Err = ParsePriorityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "critical" => Ok(Priority::Critical),
            "standard" => Ok(Priority::Standard),
            "sheddable" => Ok(Priority::Sheddable),
            _ => Err(ParsePriorityError(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_orders_by_importance() {
        assert_eq!("Critical".parse::<Priority>(), Ok(Priority::Critical));
        assert_eq!(" sheddable ".parse::<Priority>(), Ok(Priority::Sheddable));
        assert!("urgent".parse::<Priority>().unwrap_err().to_string().contains("urgent"));
        assert!(Priority::Sheddable < Priority::Standard && Priority::Standard < Priority::Critical);
        assert_eq!(Priority::default(), Priority::Standard);
    }
}
