//! The payment gateway boundary. `pay` captures and `cancel` of a paid order refunds, each with
//! the command id as the gateway's idempotency key, so a retried transaction never charges twice.

use async_trait::async_trait;
use orderflow_domain::{CommandId, OrderId};
use orderflow_storage::payments::{self, PaymentKind};
use sqlx::PgConnection;

/// One capture or refund.
#[derive(Clone, Debug)]
pub struct Charge<'a> {
    /// The gateway's idempotency key.
    pub command_id: CommandId,
    pub order_id: OrderId,
    pub amount_cents: i64,
    pub currency: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("declined")]
    Declined,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// A payment gateway. `conn` is the apply transaction, for gateways that keep their ledger in
/// orderflow's database (the simulated one); a remote gateway ignores it and relies on the key.
#[async_trait]
pub trait PaymentGateway: Send + Sync {
    async fn capture(
        &self,
        conn: &mut PgConnection,
        charge: Charge<'_>,
    ) -> Result<(), GatewayError>;
    async fn refund(&self, conn: &mut PgConnection, charge: Charge<'_>)
    -> Result<(), GatewayError>;
}

/// Records charges in the `payments` table; declines captures above a configurable amount.
#[derive(Clone, Debug, Default)]
pub struct SimulatedGateway {
    /// Captures of more than this many cents are declined (none when `None`).
    pub decline_over_cents: Option<i64>,
}

#[async_trait]
impl PaymentGateway for SimulatedGateway {
    async fn capture(
        &self,
        conn: &mut PgConnection,
        charge: Charge<'_>,
    ) -> Result<(), GatewayError> {
        if self
            .decline_over_cents
            .is_some_and(|limit| charge.amount_cents > limit)
        {
            return Err(GatewayError::Declined);
        }
        payments::record(
            conn,
            charge.order_id,
            charge.command_id,
            PaymentKind::Capture,
            charge.amount_cents,
            charge.currency,
        )
        .await?;
        Ok(())
    }

    async fn refund(
        &self,
        conn: &mut PgConnection,
        charge: Charge<'_>,
    ) -> Result<(), GatewayError> {
        payments::record(
            conn,
            charge.order_id,
            charge.command_id,
            PaymentKind::Refund,
            charge.amount_cents,
            charge.currency,
        )
        .await?;
        Ok(())
    }
}
