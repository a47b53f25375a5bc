//! Specs: a named, parameterised component (a balancing policy, a pool layer) as config files and
//! admin APIs write it.

use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// A component by name, with parameters: a balancing policy, a pool layer.
///
/// In TOML and JSON a spec is either a name (`policy = "least-response-time"`) or a table whose
/// `name` is the component's and whose other entries are its parameters
/// (`policy = { name = "bounded-load-hash", header = "x-session-id", load_factor = 1.25 }`). Names
/// are compared in lower case, with `_` read as `-`. A registry builds the component from its
/// spec; the component reads its parameters into a type of its own with [`Spec::params`].
///
/// ```
/// use switchyard_core::Spec;
///
/// let spec: Spec = serde_json::from_str(r#"{"name": "My_Policy", "load_factor": 1.5}"#).unwrap();
/// assert_eq!(spec.name(), "my-policy");
/// #[derive(serde::Deserialize)]
/// struct Params { load_factor: f64 }
/// assert_eq!(spec.params::<Params>().unwrap().load_factor, 1.5);
/// assert_eq!("round-robin".parse::<Spec>().unwrap(), Spec::named("round-robin"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    name: String,
    params: Map<String, Value>,
}

impl Spec {
    /// A spec with no parameters.
    pub fn named(name: impl AsRef<str>) -> Self {
        Self { name: normalize(name.as_ref()), params: Map::new() }
    }

    /// A spec with these parameters.
    pub fn with_params(name: impl AsRef<str>, params: Map<String, Value>) -> Self {
        Self { name: normalize(name.as_ref()), params }
    }

    /// The component's name, normalised.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The raw parameters.
    pub fn raw_params(&self) -> &Map<String, Value> {
        &self.params
    }

    /// The parameters read into the component's own type (use `#[serde(deny_unknown_fields)]` on
    /// it so that a misspelt parameter is an error naming the known ones).
    pub fn params<T: DeserializeOwned>(&self) -> Result<T, SpecError> {
        serde_json::from_value(Value::Object(self.params.clone()))
            .map_err(|e| SpecError { name: self.name.clone(), message: e.to_string() })
    }

    /// Fails unless the spec has no parameters: for components that take none.
    pub fn no_params(&self) -> Result<(), SpecError> {
        match self.params.keys().next() {
            None => Ok(()),
            Some(key) => Err(SpecError {
                name: self.name.clone(),
                message: format!("unknown parameter `{key}`: this takes none"),
            }),
        }
    }
}

/// A spec's parameters are wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?}: {message}")]
pub struct SpecError {
    /// The component's name.
    pub name: String,
    /// What is wrong with its parameters.
    pub message: String,
}

fn normalize(name: &str) -> String {
    name.trim().to_ascii_lowercase().replace('_', "-")
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if !self.params.is_empty() {
            write!(f, " {}", Value::Object(self.params.clone()))?;
        }
        Ok(())
    }
}

impl FromStr for Spec {
    type Err = SpecError;

    /// A spec of that name and no parameters, or, for text that opens with `{`, a JSON table
    /// with a `name` and parameters (`{"name": "bounded-load-hash", "load_factor": 1.5}`), as a
    /// command-line flag gives it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim_start().starts_with('{') {
            return serde_json::from_str(s).map_err(|e| SpecError {
                name: s.trim().to_string(),
                message: format!("not a spec table: {e}"),
            });
        }
        Ok(Self::named(s))
    }
}

impl serde::Serialize for Spec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.params.is_empty() {
            return serializer.serialize_str(&self.name);
        }
        let mut table = self.params.clone();
        table.insert("name".into(), Value::String(self.name.clone()));
        table.serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for Spec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Table(Map<String, Value>),
        }
        match Raw::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom("expected a name, or a table with a `name` and parameters")
        })? {
            Raw::Name(name) => Ok(Self::named(name)),
            Raw::Table(mut table) => match table.remove("name") {
                Some(Value::String(name)) => Ok(Self::with_params(name, table)),
                Some(_) => Err(serde::de::Error::custom("`name` must be a string")),
                None => Err(serde::de::Error::custom("a table needs a `name`")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_is_a_name_or_a_table() {
        let spec: Spec = serde_json::from_str(r#""Least_Connections""#).unwrap();
        assert_eq!(spec, Spec::named("least-connections"));
        assert_eq!(serde_json::to_string(&spec).unwrap(), r#""least-connections""#);

        let spec: Spec =
            serde_json::from_str(r#"{"name":"hash","header":"x-user","load_factor":1.25}"#).unwrap();
        assert_eq!(spec.name(), "hash");
        assert_eq!(spec.raw_params().len(), 2);
        let back: Spec = serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
        assert!(spec.no_params().unwrap_err().to_string().contains("takes none"));

        let err = serde_json::from_str::<Spec>(r#"{"load_factor":1.25}"#).unwrap_err().to_string();
        assert!(err.contains("needs a `name`"), "{err}");
        let flag: Spec = r#"{"name": "hash", "load_factor": 1.25, "header": "x-user"}"#.parse().unwrap();
        assert_eq!(flag, spec);
        assert!("{name".parse::<Spec>().unwrap_err().to_string().contains("not a spec table"));
        let err = serde_json::from_str::<Spec>("3").unwrap_err().to_string();
        assert!(err.contains("expected a name"), "{err}");
    }

    #[test]
    fn params_are_typed_and_misspellings_are_named() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Params {
            load_factor: f64,
        }
        let spec: Spec = serde_json::from_str(r#"{"name":"hash","load_fator":2}"#).unwrap();
        let err = spec.params::<Params>().unwrap_err().to_string();
        assert!(err.contains("hash") && err.contains("load_fator") && err.contains("load_factor"), "{err}");
    }
}
