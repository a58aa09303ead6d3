//! The simulated payment gateway's ledger. The command id is the idempotency key: a capture or
//! refund recorded twice for the same command is recorded once.

use crate::domain::{CommandId, OrderId};
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

/// Captured and refunded totals of an order, for checks and tests.
pub async fn totals(conn: &mut PgConnection, order_id: OrderId) -> sqlx::Result<(i64, i64)> {
    let row = sqlx::query!(
        r#"select coalesce(sum(amount_cents) filter (where kind = 'capture'), 0)::bigint as "captured!",
                  coalesce(sum(amount_cents) filter (where kind = 'refund'), 0)::bigint as "refunded!"
           from payments where order_id = $1"#,
        order_id.0
    )
    .fetch_one(conn)
    .await?;
    Ok((row.captured, row.refunded))
}
