//! The layers of `Settings::load_from`, key kind by key kind: the default,
//! overridden by the TOML file, overridden by the environment; and errors
//! that name the key and where the value came from.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use super::{ConfigError, ServiceName, Settings};

/// A TOML file in a directory of its own, removed on drop.
struct File {
    dir: PathBuf,
    path: PathBuf,
}

impl File {
    fn new(name: &str, text: &str) -> File {
        let dir = std::env::temp_dir().join(format!(
            "ecommerce-layers-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ecommerce.toml");
        std::fs::write(&path, text).unwrap();
        File { dir, path }
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |key| map.get(key).cloned()
}

/// The same settings read three ways: defaults only, the file, the file
/// and the environment.
fn three_layers(file: &str, vars: &[(&str, &str)]) -> [Settings; 3] {
    let file = File::new("three", file);
    [
        Settings::load_from(None, env(&[])).unwrap(),
        Settings::load_from(Some(&file.path), env(&[])).unwrap(),
        Settings::load_from(Some(&file.path), env(vars)).unwrap(),
    ]
}

#[test]
fn the_file_overrides_defaults_and_the_environment_overrides_the_file() {
    let [defaults, file, env] = three_layers(
        r#"
        schema_prefix = "file_"
        data_dir = "file-data"
        seed_stock = 5
        synchronous_commit = true
        drain = "5s"
        saga_deadline = 40
        listen = "127.0.0.1:7001"
        [peers]
        inventory = "http://file-inventory:8083"
        [client_secrets]
        orders = "secret-from-the-file-0123456789abcdef"
        "#,
        &[
            ("ECOMMERCE_SCHEMA_PREFIX", "123"),
            ("ECOMMERCE_DATA_DIR", "env-data"),
            ("ECOMMERCE_SEED_STOCK", "7"),
            ("ECOMMERCE_SYNCHRONOUS_COMMIT", "false"),
            ("ECOMMERCE_DRAIN", "250ms"),
            ("ECOMMERCE_SAGA_DEADLINE", "2m"),
            ("ECOMMERCE_LISTEN", "127.0.0.1:7002"),
            ("ECOMMERCE_INVENTORY_URL", "http://env-inventory:8083"),
            (
                "ECOMMERCE_ORDERS_CLIENT_SECRET",
                "secret-from-the-environment-0123456789",
            ),
        ],
    );
    // A string (digits stay a string from the environment).
    assert_eq!(
        [&defaults, &file, &env].map(|s| s.schema_prefix.as_str()),
        ["", "file_", "123"]
    );
    // A path.
    assert_eq!(
        [&defaults, &file, &env].map(|s| s.data_dir.to_str().unwrap()),
        ["data", "file-data", "env-data"]
    );
    // An integer.
    assert_eq!(
        [&defaults, &file, &env].map(|s| s.seed_stock),
        [None, Some(5), Some(7)]
    );
    // A boolean: the environment can turn the file's `true` off again.
    assert_eq!(
        [&defaults, &file, &env].map(|s| s.synchronous_commit),
        [false, true, false]
    );
    // Durations, as text and as a TOML number of seconds.
    assert_eq!(
        [&defaults, &file, &env].map(|s| s.drain),
        [
            Duration::from_secs(2),
            Duration::from_secs(5),
            Duration::from_millis(250)
        ]
    );
    assert_eq!(
        [&defaults, &file, &env].map(|s| s.saga_deadline),
        [
            super::DEFAULT_SAGA_DEADLINE,
            Duration::from_secs(40),
            Duration::from_secs(120)
        ]
    );
    // An address.
    assert_eq!(
        [&defaults, &file, &env].map(|s| s.listen_addr().port()),
        [8080, 7001, 7002]
    );
    // A key in a table (`[peers] inventory`, `ECOMMERCE_INVENTORY_URL`).
    assert_eq!(
        [&defaults, &file, &env].map(|s| s.peers.url(ServiceName::Inventory)),
        [
            "http://127.0.0.1:8083",
            "http://file-inventory:8083",
            "http://env-inventory:8083"
        ]
    );
    // A secret.
    assert_eq!(
        [&defaults, &file, &env].map(|s| s
            .client_secrets
            .get(ServiceName::Orders)
            .map(|s| s.expose().to_owned())),
        [
            None,
            Some("secret-from-the-file-0123456789abcdef".into()),
            Some("secret-from-the-environment-0123456789".into())
        ]
    );
    // What neither layer names keeps the layer below.
    assert_eq!(
        env.peers.url(ServiceName::Payments),
        "http://127.0.0.1:8084"
    );
    assert_eq!(env.reservation_ttl, super::DEFAULT_RESERVATION_TTL);
}

#[test]
fn an_enum_and_a_table_of_paths_are_layered_too() {
    let [defaults, file, env] = three_layers(
        r#"
        service = "gateway"
        [tls]
        cert = "file.crt"
        key = "file.key"
        ca = "file-ca.pem"
        [peers]
        identity = "https://a:1"
        catalog = "https://a:2"
        inventory = "https://a:3"
        payments = "https://a:4"
        orders = "https://a:5"
        shipping = "https://a:6"
        analytics = "https://a:7"
        "#,
        &[
            ("ECOMMERCE_SERVICE", "orders"),
            ("ECOMMERCE_DATABASE_URL", "postgres://orders@db/shop"),
            ("ECOMMERCE_TLS_CERT", "env.crt"),
            ("ECOMMERCE_TLS_KEY", "env.key"),
            ("ECOMMERCE_TLS_CA", "env-ca.pem"),
        ],
    );
    assert_eq!(defaults.service, None);
    assert_eq!(file.service, Some(ServiceName::Gateway));
    assert_eq!(env.service, Some(ServiceName::Orders));
    assert_eq!(defaults.tls, None);
    assert_eq!(
        file.tls.as_ref().map(|t| t.cert.to_str().unwrap()),
        Some("file.crt")
    );
    let tls = env.tls.unwrap();
    assert_eq!(
        [&tls.cert, &tls.key, &tls.ca].map(|p| p.to_str().unwrap()),
        ["env.crt", "env.key", "env-ca.pem"]
    );
}

#[test]
fn an_empty_variable_counts_as_unset() {
    let file = File::new("empty", "drain = \"5s\"\n");
    let settings = Settings::load_from(
        Some(&file.path),
        env(&[("ECOMMERCE_DRAIN", ""), ("ECOMMERCE_SERVICE", "")]),
    )
    .unwrap();
    assert_eq!(settings.drain, Duration::from_secs(5));
    assert_eq!(settings.service, None);
}

#[test]
fn a_bad_value_names_its_key_and_its_file() {
    let file = File::new("bad-file", "drain = \"soon\"\n");
    let err = Settings::load_from(Some(&file.path), env(&[])).unwrap_err();
    match &err {
        ConfigError::Parse { path, message } => {
            assert_eq!(path, &file.path);
            assert!(
                message.starts_with("drain: \"soon\" is not a duration"),
                "{err}"
            );
        }
        other => panic!("not a Parse error: {other}"),
    }
    assert!(
        err.to_string().contains(file.path.to_str().unwrap()),
        "{err}"
    );

    let file = File::new("bad-type", "seed_stock = \"many\"\n");
    let err = Settings::load_from(Some(&file.path), env(&[])).unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    assert!(
        err.to_string().contains("seed_stock: invalid type"),
        "{err}"
    );

    let file = File::new("bad-peer", "[peers]\ninventory = 5\n");
    let err = Settings::load_from(Some(&file.path), env(&[])).unwrap_err();
    assert!(err.to_string().contains("peers.inventory:"), "{err}");
}

#[test]
fn a_bad_value_from_the_environment_names_its_variable() {
    for (var, value, why) in [
        (
            "ECOMMERCE_SAGA_DEADLINE",
            "soon",
            "\"soon\" is not a duration",
        ),
        (
            "ECOMMERCE_SAGA_LEASE_TTL",
            "10 parsecs",
            "unknown time unit",
        ),
        ("ECOMMERCE_SYNCHRONOUS_COMMIT", "yes", "expected a boolean"),
        ("ECOMMERCE_SEED_STOCK", "lots", "invalid type"),
        ("ECOMMERCE_LISTEN", "nowhere", "invalid socket address"),
        ("ECOMMERCE_PAYMENTS_URL", "", ""),
    ] {
        let result = Settings::load_from(None, env(&[(var, value)]));
        if value.is_empty() {
            assert!(result.is_ok(), "{var} empty is unset");
            continue;
        }
        let err = result.unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { key, .. } if key == var),
            "{var}: {err}"
        );
        assert!(err.to_string().contains(why), "{var}: {err}");
        assert!(err.to_string().contains("environment"), "{var}: {err}");
    }
    // The environment wins over a file even when it is the one that is wrong.
    let file = File::new("env-wrong", "drain = \"1s\"\n");
    let err = Settings::load_from(Some(&file.path), env(&[("ECOMMERCE_DRAIN", "1 fortnight")]))
        .unwrap_err();
    assert!(err.to_string().starts_with("ECOMMERCE_DRAIN: "), "{err}");
}

#[test]
fn a_rule_broken_says_which_layer_set_the_value() {
    let err = Settings::load_from(None, env(&[("ECOMMERCE_SAGA_DEADLINE", "0s")])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "saga_deadline: must be longer than zero (every order would be rejected) \
         (set by ECOMMERCE_SAGA_DEADLINE)"
    );
    let file = File::new("rule", "saga_lease_ttl = \"10ms\"\n");
    let err = Settings::load_from(Some(&file.path), env(&[])).unwrap_err();
    assert!(err.to_string().starts_with("saga_lease_ttl: "), "{err}");
    assert!(
        err.to_string()
            .ends_with(&format!("(set in {})", file.path.display())),
        "{err}"
    );
    let err = Settings::load_from(None, env(&[("ECOMMERCE_INVENTORY_URL", "x")]));
    assert!(err.is_ok(), "peers are not checked without tls");
}

#[test]
fn a_missing_file_is_an_error_not_an_empty_layer() {
    let path = std::env::temp_dir().join(format!(
        "ecommerce-layers-missing-{}.toml",
        uuid::Uuid::new_v4()
    ));
    let err = Settings::load_from(Some(&path), env(&[])).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err}");
}
