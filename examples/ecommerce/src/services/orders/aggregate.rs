//! The Order aggregate: its commands, events and the rules that decide them.

use serde::{Deserialize, Serialize};
use trellis_eventsourcing::Aggregate;

pub(crate) use super::client::OrderEvent;
use crate::services::inventory::client::Line;

#[derive(Debug, Clone)]
pub(crate) enum OrderCommand {
    Place {
        customer: String,
        lines: Vec<Line>,
        total_cents: i64,
    },
    Confirm {
        payment: String,
        reservation: String,
    },
    MarkPendingValidation,
    Reject {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OrderError {
    #[error("order does not exist")]
    NotPlaced,
    #[error("order is already {0}")]
    Final(&'static str),
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum OrderStatus {
    #[default]
    New,
    Placed,
    Confirmed,
    PendingValidation,
    Rejected,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Order {
    status: OrderStatus,
}

impl Aggregate for Order {
    const TYPE: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    // Every command is idempotent in its target state: a saga step re-run
    // after a crash appends nothing the second time.
    fn handle(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        use OrderStatus as S;
        match (self.status, command) {
            (
                S::New,
                OrderCommand::Place {
                    customer,
                    lines,
                    total_cents,
                },
            ) => Ok(vec![OrderEvent::Placed {
                customer,
                lines,
                total_cents,
            }]),
            (_, OrderCommand::Place { .. }) => Ok(vec![]),
            (S::New, _) => Err(OrderError::NotPlaced),
            (
                S::Placed,
                OrderCommand::Confirm {
                    payment,
                    reservation,
                },
            ) => Ok(vec![OrderEvent::Confirmed {
                payment_id: payment,
                reservation_id: reservation,
            }]),
            (S::Placed, OrderCommand::MarkPendingValidation) => {
                Ok(vec![OrderEvent::PendingValidation])
            }
            // Validated once inventory is back: the validation saga confirms it.
            (
                S::PendingValidation,
                OrderCommand::Confirm {
                    payment,
                    reservation,
                },
            ) => Ok(vec![OrderEvent::Confirmed {
                payment_id: payment,
                reservation_id: reservation,
            }]),
            (S::Placed | S::PendingValidation | S::Confirmed, OrderCommand::Reject { reason }) => {
                Ok(vec![OrderEvent::Rejected { reason }])
            }
            (S::Confirmed, OrderCommand::Confirm { .. })
            | (S::PendingValidation, OrderCommand::MarkPendingValidation)
            | (S::Rejected, OrderCommand::Reject { .. }) => Ok(vec![]),
            (S::Rejected, _) => Err(OrderError::Final("rejected")),
            (S::Confirmed, _) => Err(OrderError::Final("confirmed")),
        }
    }

    fn apply(&mut self, event: &OrderEvent) {
        self.status = match event {
            OrderEvent::Placed { .. } => OrderStatus::Placed,
            OrderEvent::Confirmed { .. } => OrderStatus::Confirmed,
            OrderEvent::PendingValidation => OrderStatus::PendingValidation,
            OrderEvent::Rejected { .. } => OrderStatus::Rejected,
        };
    }
}

#[cfg(test)]
mod tests {
    use trellis_eventsourcing::testing::AggregateTest;

    use super::*;

    fn placed() -> OrderEvent {
        OrderEvent::Placed {
            customer: "ada".into(),
            lines: vec![Line {
                sku: "TEA-001".into(),
                quantity: 2,
            }],
            total_cents: 2500,
        }
    }

    #[test]
    fn a_placed_order_confirms_once() {
        let confirm = OrderCommand::Confirm {
            payment: "p".into(),
            reservation: "r".into(),
        };
        AggregateTest::<Order>::given(vec![placed()])
            .when(confirm.clone())
            .then_expect_events(vec![OrderEvent::Confirmed {
                payment_id: "p".into(),
                reservation_id: "r".into(),
            }]);
        // Re-run by a recovered saga: nothing new.
        AggregateTest::<Order>::given(vec![
            placed(),
            OrderEvent::Confirmed {
                payment_id: "p".into(),
                reservation_id: "r".into(),
            },
        ])
        .when(confirm)
        .then_expect_events(vec![]);
    }

    #[test]
    fn commands_before_placing_are_refused() {
        AggregateTest::<Order>::given_no_events()
            .when(OrderCommand::MarkPendingValidation)
            .then_expect_error(OrderError::NotPlaced);
    }

    #[test]
    fn a_rejected_order_stays_rejected() {
        let rejected = OrderEvent::Rejected {
            reason: "payment failed".into(),
        };
        AggregateTest::<Order>::given(vec![placed(), rejected.clone()])
            .when(OrderCommand::Confirm {
                payment: "p".into(),
                reservation: "r".into(),
            })
            .then_expect_error(OrderError::Final("rejected"));
        AggregateTest::<Order>::given(vec![placed(), rejected])
            .when(OrderCommand::Reject {
                reason: "again".into(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn pending_validation_orders_confirm_once_validated() {
        AggregateTest::<Order>::given(vec![placed(), OrderEvent::PendingValidation])
            .when(OrderCommand::Confirm {
                payment: "p".into(),
                reservation: "r".into(),
            })
            .then_expect_events(vec![OrderEvent::Confirmed {
                payment_id: "p".into(),
                reservation_id: "r".into(),
            }]);
    }

    #[test]
    fn pending_validation_orders_can_be_rejected() {
        AggregateTest::<Order>::given(vec![placed(), OrderEvent::PendingValidation])
            .when(OrderCommand::Reject {
                reason: "out of stock".into(),
            })
            .then_expect_events(vec![OrderEvent::Rejected {
                reason: "out of stock".into(),
            }]);
    }
}
