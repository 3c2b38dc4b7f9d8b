//! Test helpers: given/when/then for aggregates, and (feature `testing`) the
//! backend conformance suite.

use std::fmt::Debug;

use crate::aggregate::Aggregate;

#[cfg(feature = "testing")]
pub mod conformance;

/// Given/when/then tests for an [`Aggregate`], without any storage.
///
/// # Examples
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// # use trellis_eventsourcing::{Aggregate, DomainEvent};
/// # #[derive(Debug, Default, Serialize, Deserialize)]
/// # struct Counter { value: u64 }
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// # enum CounterEvent { Incremented { by: u64 } }
/// # impl DomainEvent for CounterEvent {}
/// # #[derive(Debug, PartialEq, thiserror::Error)]
/// # #[error("zero")]
/// # struct ZeroIncrement;
/// # impl Aggregate for Counter {
/// #     const TYPE: &'static str = "counter";
/// #     type Command = u64; type Event = CounterEvent; type Error = ZeroIncrement;
/// #     fn handle(&self, by: u64) -> Result<Vec<CounterEvent>, ZeroIncrement> {
/// #         if by == 0 { return Err(ZeroIncrement) } Ok(vec![CounterEvent::Incremented { by }]) }
/// #     fn apply(&mut self, e: &CounterEvent) { let CounterEvent::Incremented { by } = e; self.value += by }
/// # }
/// use trellis_eventsourcing::testing::AggregateTest;
///
/// AggregateTest::<Counter>::given(vec![CounterEvent::Incremented { by: 2 }])
///     .when(3)
///     .then_expect_events(vec![CounterEvent::Incremented { by: 3 }]);
/// AggregateTest::<Counter>::given_no_events().when(0).then_expect_error(ZeroIncrement);
/// ```
#[derive(Debug)]
pub struct AggregateTest<A: Aggregate> {
    state: A,
}

/// The outcome of [`AggregateTest::when`], ready for assertions.
#[derive(Debug)]
pub struct AggregateTestResult<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> AggregateTest<A> {
    /// Starts from the state built by applying `events` to `A::default()`.
    pub fn given(events: Vec<A::Event>) -> Self {
        let mut state = A::default();
        for e in &events {
            state.apply(e);
        }
        AggregateTest { state }
    }

    /// Starts from `A::default()`.
    pub fn given_no_events() -> Self {
        Self::given(Vec::new())
    }

    /// Handles `command`.
    pub fn when(self, command: A::Command) -> AggregateTestResult<A> {
        let result = self.state.handle(command);
        AggregateTestResult {
            state: self.state,
            result,
        }
    }
}

impl<A: Aggregate> AggregateTestResult<A>
where
    A::Event: PartialEq + Debug,
{
    /// Asserts the command produced exactly `expected`.
    ///
    /// # Panics
    ///
    /// When the command failed or produced other events.
    pub fn then_expect_events(self, expected: Vec<A::Event>) -> A {
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "unexpected events");
                let mut state = self.state;
                for e in &events {
                    state.apply(e);
                }
                state
            }
            Err(err) => panic!("expected events {expected:?}, command failed: {err}"),
        }
    }

    /// Asserts the command failed and `check` accepts the error.
    ///
    /// # Panics
    ///
    /// When the command succeeded or `check` returns false.
    pub fn then_expect_error_matches(self, check: impl FnOnce(&A::Error) -> bool) {
        match self.result {
            Ok(events) => panic!("expected an error, got events {events:?}"),
            Err(err) => assert!(check(&err), "unexpected error: {err:?}"),
        }
    }

    /// Asserts the command failed with exactly `expected`.
    ///
    /// # Panics
    ///
    /// When the command succeeded or failed differently.
    pub fn then_expect_error(self, expected: A::Error)
    where
        A::Error: PartialEq,
    {
        match self.result {
            Ok(events) => panic!("expected error {expected:?}, got events {events:?}"),
            Err(err) => assert_eq!(err, expected),
        }
    }

    /// The raw result, for custom assertions.
    ///
    /// # Errors
    ///
    /// The aggregate's own error when it rejected the command.
    pub fn into_result(self) -> Result<Vec<A::Event>, A::Error> {
        self.result
    }
}
