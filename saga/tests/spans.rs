//! Every step action and every compensation runs in a `saga.step` span of
//! its own, inside the run's `saga` span, inside the caller's span: a saga
//! started while handling a request belongs to that request's trace.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tracing::Instrument as _;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use trellis_saga::{MemorySagaLog, Orchestrator, Saga, SagaStatus, Step, StepError};

/// A span as opened: its name, `step.name` and `phase` fields, and the
/// names of its ancestors, nearest first.
#[derive(Debug, Clone, PartialEq)]
struct Opened {
    name: &'static str,
    step: Option<String>,
    phase: Option<String>,
    ancestors: Vec<&'static str>,
}

#[derive(Default)]
struct Fields {
    step: Option<String>,
    phase: Option<String>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        match field.name() {
            "step.name" => self.step = Some(text),
            "phase" => self.phase = Some(text.trim_matches('"').to_owned()),
            _ => {}
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "step.name" => self.step = Some(value.to_owned()),
            "phase" => self.phase = Some(value.to_owned()),
            _ => {}
        }
    }
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Opened>>>);

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let ancestors = ctx
            .span(id)
            .map(|span| span.scope().skip(1).map(|s| s.name()).collect())
            .unwrap_or_default();
        self.0.lock().unwrap().push(Opened {
            name: attrs.metadata().name(),
            step: fields.step,
            phase: fields.phase,
            ancestors,
        });
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct State {
    done: u32,
}

/// `reserve` succeeds, `charge` is refused: `reserve` is compensated.
fn saga() -> Saga<State> {
    Saga::new("place-order")
        .step(Step::new(
            "reserve",
            |mut s: State, _cx| async move {
                s.done += 1;
                Ok(s)
            },
            |_s, _cx| async { Ok(()) },
        ))
        .step(Step::new(
            "charge",
            |_s: State, _cx| async { Err(StepError::permanent("declined")) },
            |_s, _cx| async { Ok(()) },
        ))
}

// current_thread: the run stays on this thread, under the thread-local
// subscriber set here.
#[tokio::test]
async fn each_action_and_compensation_has_a_step_span_under_the_callers_span() {
    let recorder = Recorder::default();
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(recorder.clone()));
    let orchestrator = Orchestrator::new(MemorySagaLog::new(), "node-1");
    let record = orchestrator
        .start(&saga(), "order-1", State::default())
        .instrument(tracing::info_span!("POST /orders"))
        .await
        .unwrap();
    assert_eq!(record.status, SagaStatus::Compensated);

    let steps: Vec<(Option<String>, Option<String>, Vec<&'static str>)> = recorder
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|o| o.name == "saga.step")
        .map(|o| (o.step.clone(), o.phase.clone(), o.ancestors.clone()))
        .collect();
    let under_request = vec!["saga", "POST /orders"];
    assert_eq!(
        steps,
        vec![
            (
                Some("reserve".into()),
                Some("action".into()),
                under_request.clone()
            ),
            (
                Some("charge".into()),
                Some("action".into()),
                under_request.clone()
            ),
            (
                Some("reserve".into()),
                Some("compensation".into()),
                under_request
            ),
        ]
    );
}
