use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};

use crate::{ctx, store};

type Events = Arc<Mutex<Vec<HashMap<String, String>>>>;

/// Records every event's fields as strings.
struct Capture(Events);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        fields.insert("target".into(), event.metadata().target().to_owned());
        self.0.lock().unwrap().push(fields);
    }
}

const FLAGS: &str = r#"{ "flags": { "checkout": {
    "variants": { "on": true, "off": false }, "defaultVariant": "off",
    "targeting": [{ "if": [{ "attribute": "tenant", "op": "equals", "value": "acme" }], "variant": "on" }]
} } }"#;

#[test]
fn every_evaluation_emits_the_opentelemetry_feature_flag_attributes() {
    let events = Events::default();
    let subscriber = tracing_subscriber::registry().with(Capture(events.clone()));
    let s = store(FLAGS);
    // Other tests of this binary evaluate flags on other threads with no
    // subscriber: a callsite they register while this one's dispatcher is
    // being set up can cache "never interested" and drop an event here.
    // Register every callsite first, then recompute their interest with
    // this subscriber alive.
    let _ = s.bool_value("checkout", &ctx(None, &[("tenant", "acme")]));
    let _ = s.bool_value("checkout", &ctx(None, &[]));
    let _ = s.bool_value("missing", &ctx(None, &[]));
    tracing::subscriber::with_default(subscriber, || {
        tracing::callsite::rebuild_interest_cache();
        s.bool_value("checkout", &ctx(None, &[("tenant", "acme")]))
            .unwrap();
        s.bool_value("checkout", &ctx(None, &[])).unwrap();
        let _ = s.bool_value("missing", &ctx(None, &[]));
    });
    let events = events.lock().unwrap();
    let evaluations: Vec<_> = events
        .iter()
        .filter(|e| e.contains_key("feature_flag.key"))
        .collect();
    assert_eq!(evaluations.len(), 3, "{events:?}");
    let first = evaluations[0];
    assert_eq!(first["feature_flag.key"], "checkout");
    assert_eq!(first["feature_flag.variant"], "on");
    assert_eq!(
        first["feature_flag.provider_name"],
        trellis_flags::PROVIDER_NAME
    );
    assert_eq!(first["feature_flag.reason"], "TARGETING_MATCH");
    assert_eq!(first["message"], "feature_flag.evaluation");
    assert_eq!(first["target"], "trellis_flags");
    assert_eq!(evaluations[1]["feature_flag.variant"], "off");
    assert_eq!(evaluations[1]["feature_flag.reason"], "DEFAULT");
    assert_eq!(evaluations[2]["feature_flag.reason"], "ERROR");
    assert_eq!(evaluations[2]["error.type"], "FLAG_NOT_FOUND");
}

#[cfg(feature = "metrics")]
#[test]
fn evaluations_are_counted_by_flag_variant_and_reason() {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;
    use trellis_flags::{FlagDefinitions, FlagMetrics, FlagStore};

    let mut registry = Registry::default();
    let s = FlagStore::builder()
        .metrics(FlagMetrics::new(&mut registry))
        .build(FlagDefinitions::from_json(FLAGS).unwrap())
        .unwrap();
    for _ in 0..3 {
        s.bool_value("checkout", &ctx(None, &[("tenant", "acme")]))
            .unwrap();
    }
    s.bool_value("checkout", &ctx(None, &[])).unwrap();
    let _ = s.string_value("checkout", &ctx(None, &[]));
    let _ = s.bool_value("no-such-flag-1", &ctx(None, &[]));
    let _ = s.bool_value("no-such-flag-2", &ctx(None, &[]));
    // A reload keeps counting into the same series.
    s.load(FlagDefinitions::from_json(FLAGS).unwrap()).unwrap();
    s.bool_value("checkout", &ctx(None, &[("tenant", "acme")]))
        .unwrap();

    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    let line = |labels: &str| format!("trellis_flags_evaluations_total{{{labels}}} ");
    let value = |labels: &str| -> Option<u64> {
        let prefix = line(labels);
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.parse().unwrap())
    };
    assert_eq!(
        value(r#"flag="checkout",variant="on",reason="TARGETING_MATCH""#),
        Some(4),
        "{text}"
    );
    assert_eq!(
        value(r#"flag="checkout",variant="off",reason="DEFAULT""#),
        Some(1),
        "{text}"
    );
    assert_eq!(
        value(r#"flag="checkout",variant="",reason="ERROR""#),
        Some(1),
        "{text}"
    );
    // Unknown keys share one series.
    assert_eq!(
        value(r#"flag="",variant="",reason="ERROR""#),
        Some(2),
        "{text}"
    );
    // Pairs that never happened export nothing.
    assert_eq!(
        value(r#"flag="checkout",variant="off",reason="STATIC""#),
        None,
        "{text}"
    );
}
