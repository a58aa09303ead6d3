//! The simulated payment gateway's ledger. The command id is the idempotency key: a capture or
//! refund recorded twice for the same command is recorded once.

use orderflow_domain::{CommandId, OrderId};
use sqlx::PgConnection;

/// Records a capture (or finds the one this command already made).
pub async fn record(
    conn: &mut PgConnection,
    order_id: OrderId,
    command_id: CommandId,
    kind: PaymentKind,
    amount_cents: i64,
    currency: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into payments (order_id, command_id, kind, amount_cents, currency)
         values ($1, $2, $3, $4, $5) on conflict (command_id) do nothing",
        order_id.0,
        command_id.0,
        kind.as_str(),
        amount_cents,
        currency
    )
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaymentKind {
    Capture,
    Refund,
}

impl PaymentKind {
    fn as_str(self) -> &'static str {
        match self {
            PaymentKind::Capture => "capture",
            PaymentKind::Refund => "refund",
        }
    }
}
