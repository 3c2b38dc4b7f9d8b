//! The layers of [`Settings::load`](super::Settings::load) on [`figment`]:
//! the struct's defaults (`#[serde(default)]`) < the TOML file < the
//! `ECOMMERCE_*` variables of [`ENV_VARS`], and the way back from a bad
//! value to the key and the layer it came from.
//!
//! The environment is a provider of its own rather than figment's `Env`:
//! the variable names are not a mechanical spelling of every key
//! (`ECOMMERCE_ORDERS_URL` is `peers.orders`, `ECOMMERCE_TLS_CERT` is
//! `tls.cert`), an empty variable counts as unset, the environment can be
//! given as a function (tests), and values stay the text they are (a
//! secret or a schema prefix of digits is still a string) except for the
//! few keys that are numbers or booleans ([`PARSED`]).

use std::path::Path;

use figment::value::{Dict, Map, Tag, Value};
use figment::{Error, Figment, Metadata, Profile, Provider, Source};

use super::{ConfigError, ENV_VARS, ServiceName};

/// The name of the environment layer in figment's metadata.
const ENV_LAYER: &str = "environment";

/// The variables whose value is parsed the way figment reads an
/// environment value (TOML-like: `true`, `1000`), for keys that are no
/// strings. Every other variable is taken as text.
const PARSED: &[&str] = &[
    "ECOMMERCE_SEED_STOCK",
    "ECOMMERCE_SYNCHRONOUS_COMMIT",
    "ECOMMERCE_ORDERS_ADAPTIVE",
    "ECOMMERCE_ORDERS_ADAPTIVE_MAX_LIMIT",
];

/// The settings key (path) a variable of [`ENV_VARS`] sets:
/// `ECOMMERCE_<KEY>` is `<key>`, but `ECOMMERCE_<SERVICE>_URL` is
/// `peers.<service>`, `ECOMMERCE_ORDERS_<KEY>` is `orders.<key>`, `ECOMMERCE_<SERVICE>_CLIENT_SECRET` is
/// `client_secrets.<service>` and `ECOMMERCE_TLS_<PART>` is `tls.<part>`.
pub(super) fn key_of(var: &str) -> Option<Vec<String>> {
    if !ENV_VARS.contains(&var) {
        return None;
    }
    let rest = var.strip_prefix("ECOMMERCE_")?.to_ascii_lowercase();
    if crate::platform::delivery::ENV_VARS.contains(&var) {
        return Some(vec!["delivery".into(), rest]);
    }
    let service = |name: &str| ServiceName::ALL.into_iter().any(|s| s.as_str() == name);
    if let Some(part) = rest.strip_prefix("tls_") {
        return Some(vec!["tls".into(), part.into()]);
    }
    if let Some(client) = rest.strip_suffix("_client_secret") {
        return Some(vec!["client_secrets".into(), client.into()]);
    }
    if let Some(peer) = rest.strip_suffix("_url")
        && service(peer)
    {
        return Some(vec!["peers".into(), peer.into()]);
    }
    if let Some(key) = rest.strip_prefix("orders_") {
        return Some(vec!["orders".into(), key.into()]);
    }
    Some(vec![rest])
}

/// The variable that sets `path`, if one does (the inverse of [`key_of`]).
pub(super) fn var_of<S: AsRef<str>>(path: &[S]) -> Option<&'static str> {
    ENV_VARS.iter().copied().find(|var| {
        key_of(var).is_some_and(|key| {
            key.iter()
                .map(String::as_str)
                .eq(path.iter().map(AsRef::as_ref))
        })
    })
}

/// The environment layer: the non-empty variables of [`ENV_VARS`], read
/// once.
pub(super) struct EnvLayer {
    vars: Vec<(&'static str, String)>,
}

impl EnvLayer {
    /// Reads every variable of [`ENV_VARS`] through `env`.
    pub(super) fn read(env: impl Fn(&str) -> Option<String>) -> Self {
        EnvLayer {
            vars: ENV_VARS
                .iter()
                .filter_map(|var| Some((*var, env(var).filter(|v| !v.is_empty())?)))
                .collect(),
        }
    }

    /// Whether `var` is set (and not empty).
    pub(super) fn is_set(&self, var: &str) -> bool {
        self.vars.iter().any(|(v, _)| *v == var)
    }
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_LAYER).interpolater(|_: &Profile, path: &[&str]| {
            var_of(path).map_or_else(|| path.join("."), str::to_owned)
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        let mut root = Dict::new();
        for (var, text) in &self.vars {
            // `[delivery]`'s variables are applied by its own parser after
            // the layers (see `Settings::load_from`).
            if crate::platform::delivery::ENV_VARS.contains(var) {
                continue;
            }
            let Some(path) = key_of(var) else { continue };
            let value = if PARSED.contains(var) {
                text.parse::<Value>().unwrap_or_else(|never| match never {})
            } else {
                Value::from(text.clone())
            };
            match path.as_slice() {
                [key] => {
                    root.insert(key.clone(), value);
                }
                [table, key] => {
                    let entry = root
                        .entry(table.clone())
                        .or_insert_with(|| Value::Dict(Tag::Default, Dict::new()));
                    if let Value::Dict(_, dict) = entry {
                        dict.insert(key.clone(), value);
                    }
                }
                _ => {}
            }
        }
        Ok(Profile::Default.collect(root))
    }
}

/// Where a value came from, for a message: ` (set in FILE)`, ` (set by
/// VAR)`, or nothing for a default.
pub(super) fn origin(figment: &Figment, key: &str) -> String {
    match figment.find_metadata(key) {
        Some(md) if md.name == ENV_LAYER => {
            let path: Vec<&str> = key.split('.').collect();
            var_of(&path).map_or_else(String::new, |var| format!(" (set by {var})"))
        }
        Some(Metadata {
            source: Some(Source::File(file)),
            ..
        }) => format!(" (set in {})", file.display()),
        _ => String::new(),
    }
}

/// A figment error as a [`ConfigError`] naming the key and its layer: a
/// bad value from the file is [`ConfigError::Parse`] with the file and
/// `key: why`, one from the environment [`ConfigError::Invalid`] with the
/// variable as its key.
pub(super) fn to_config_error(error: Error, file: Option<&Path>) -> ConfigError {
    // The first of a chain is the first failure; the rest follow from it.
    let Some(error) = error.into_iter().next() else {
        return ConfigError::Invalid {
            key: "settings".into(),
            message: "invalid".into(),
        };
    };
    let mut path = error.path.clone();
    if let figment::error::Kind::UnknownField(field, _) = &error.kind {
        path.push(field.clone());
    }
    let why = error.kind.to_string();
    match &error.metadata {
        Some(md) if md.name == ENV_LAYER => ConfigError::Invalid {
            key: var_of(&path).map_or_else(|| path.join("."), str::to_owned),
            message: format!("{why} (environment variable)"),
        },
        md => {
            let from_file = md
                .as_ref()
                .and_then(|md| md.source.as_ref())
                .and_then(Source::file_path)
                .map(Path::to_owned)
                .or_else(|| file.map(Path::to_owned));
            let key = path.join(".");
            match from_file {
                Some(path) => ConfigError::Parse {
                    path,
                    message: if key.is_empty() {
                        why
                    } else {
                        format!("{key}: {why}")
                    },
                },
                None => ConfigError::Invalid {
                    key: if key.is_empty() {
                        "settings".into()
                    } else {
                        key
                    },
                    message: why,
                },
            }
        }
    }
}
