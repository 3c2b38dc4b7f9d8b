//! The breaker against a simple reference model over random sequences of
//! call outcomes and clock advances.

use std::collections::VecDeque;

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone, Copy)]
enum Op {
    Ok,
    Fail,
    Ignored,
    Advance(u64),
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Count(u32),
    /// A time window of this many seconds, one bucket per second.
    Time(u64),
    Consecutive(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum S {
    Closed,
    Open,
    HalfOpen,
}

/// The reference: resilience4j's rules written as plainly as possible.
#[derive(Debug)]
struct Model {
    mode: Mode,
    minimum: u32,
    threshold: u64,
    permitted: u32,
    wait: u64,
    now: u64,
    state: S,
    /// Outcomes in the window: (second of the call, failed).
    window: VecDeque<(u64, bool)>,
    in_a_row: u32,
    open_until: u64,
    taken: u32,
    done: u32,
    failed: u32,
}

impl Model {
    fn open(&mut self) {
        self.state = S::Open;
        self.open_until = self.now + self.wait;
    }

    fn close(&mut self) {
        self.state = S::Closed;
        self.window.clear();
        self.in_a_row = 0;
    }

    /// Returns whether the call was admitted.
    fn call(&mut self, op: Op) -> bool {
        loop {
            match self.state {
                S::Closed => {
                    let fail = match op {
                        Op::Ok => false,
                        Op::Fail => true,
                        _ => return true,
                    };
                    match self.mode {
                        Mode::Count(size) => {
                            self.window.push_back((self.now, fail));
                            if self.window.len() > size as usize {
                                self.window.pop_front();
                            }
                            let (calls, failures) = self.expected_calls();
                            if calls >= u64::from(self.minimum.min(size))
                                && failures * 100 >= self.threshold * calls
                            {
                                self.open();
                            }
                        }
                        Mode::Time(_) => {
                            self.window.push_back((self.now, fail));
                            let (calls, failures) = self.expected_calls();
                            if calls >= u64::from(self.minimum)
                                && failures * 100 >= self.threshold * calls
                            {
                                self.open();
                            }
                        }
                        Mode::Consecutive(n) => {
                            if fail {
                                self.in_a_row += 1;
                                if self.in_a_row >= n {
                                    self.open();
                                }
                            } else {
                                self.in_a_row = 0;
                            }
                        }
                    }
                    return true;
                }
                S::Open => {
                    if self.now < self.open_until {
                        return false;
                    }
                    self.state = S::HalfOpen;
                    self.taken = 0;
                    self.done = 0;
                    self.failed = 0;
                }
                S::HalfOpen => {
                    if self.taken >= self.permitted {
                        return false;
                    }
                    let fail = match op {
                        Op::Ok => false,
                        Op::Fail => true,
                        _ => return true, // ignored: the permit is given back
                    };
                    self.taken += 1;
                    self.done += 1;
                    self.failed += u32::from(fail);
                    if matches!(self.mode, Mode::Consecutive(_)) && fail {
                        self.open();
                    } else if self.done == self.permitted {
                        if self.failed > 0
                            && u64::from(self.failed) * 100 >= self.threshold * u64::from(self.done)
                        {
                            self.open();
                        } else {
                            self.close();
                        }
                    }
                    return true;
                }
            }
        }
    }

    fn expected_calls(&mut self) -> (u64, u64) {
        if let Mode::Time(secs) = self.mode {
            let now = self.now;
            self.window.retain(|(at, _)| at + secs > now);
        }
        match self.mode {
            Mode::Count(_) | Mode::Time(_) => (
                self.window.len() as u64,
                self.window.iter().filter(|(_, f)| *f).count() as u64,
            ),
            Mode::Consecutive(_) => (u64::from(self.in_a_row), u64::from(self.in_a_row)),
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => Just(Op::Ok),
        5 => Just(Op::Fail),
        1 => Just(Op::Ignored),
        2 => (1u64..8).prop_map(Op::Advance),
    ]
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        (1u32..12).prop_map(Mode::Count),
        (1u64..20).prop_map(Mode::Time),
        (1u32..5).prop_map(Mode::Consecutive),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_breaker_follows_the_reference_model(
        mode in mode(),
        minimum in 1u32..12,
        threshold in 1u64..=100,
        permitted in 1u32..4,
        wait in 1u64..10,
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async move {
            let window = match mode {
                Mode::Count(size) => SlidingWindow::Count { size },
                Mode::Time(secs) => SlidingWindow::Time {
                    duration: Duration::from_secs(secs),
                    buckets: None,
                },
                Mode::Consecutive(failures) => SlidingWindow::Consecutive { failures },
            };
            let (layer, handle) = build(CircuitBreakerConfig {
                window,
                minimum_calls: minimum,
                failure_rate_threshold: threshold as f64,
                permitted_calls_in_half_open: permitted,
                wait_in_open: Duration::from_secs(wait),
                ..Default::default()
            });
            let (mut svc, _) = breaker(layer);
            let mut model = Model {
                mode, minimum, threshold, permitted, wait,
                now: 0, state: S::Closed, window: VecDeque::new(), in_a_row: 0,
                open_until: 0, taken: 0, done: 0, failed: 0,
            };
            for (i, op) in ops.into_iter().enumerate() {
                if let Op::Advance(secs) = op {
                    advance(Duration::from_secs(secs)).await;
                    model.now += secs;
                    continue;
                }
                let call = match op {
                    Op::Ok => Call::Ok,
                    Op::Fail => Call::Fail,
                    _ => Call::Rejected,
                };
                let admitted = model.call(op);
                let result = run(&mut svc, call).await;
                let rejected = matches!(&result, Err(e) if e.is::<CircuitOpen>());
                prop_assert_eq!(!rejected, admitted, "op {} {:?}: {:?}", i, op, model);
                let state = match handle.state() {
                    CircuitState::Closed => S::Closed,
                    CircuitState::Open => S::Open,
                    CircuitState::HalfOpen => S::HalfOpen,
                    other => panic!("unexpected {other}"),
                };
                prop_assert_eq!(state, model.state, "op {} {:?}: {:?}", i, op, model);
                let metrics = handle.metrics();
                prop_assert_eq!(
                    (metrics.calls, metrics.failed_calls),
                    model.expected_calls(),
                    "op {} {:?}: {:?}", i, op, model
                );
            }
            Ok(())
        })?;
    }
}
