//! Commands: what a caller asks of one order. The same enum is the HTTP body of
//! `POST /v1/orders/{id}/commands` and the `command` of the queue contract.

use super::details::{DetailsPatch, ShippingAddress};
use super::values::{Currency, CustomerId, Items, Note, Quantity, Sku, TrackingNumber, UnitPrice};
use serde::{Deserialize, Serialize};

/// One command, tagged by `type`. Unknown types and unknown fields do not parse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    Create {
        customer_id: CustomerId,
        currency: Currency,
        items: Items,
    },
    AddItem {
        sku: Sku,
        quantity: Quantity,
        unit_price_cents: UnitPrice,
    },
    /// Removes `quantity` of the line, or the whole line when `quantity` is absent.
    RemoveItem {
        sku: Sku,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quantity: Option<Quantity>,
    },
    Reserve {},
    Pay {},
    /// Ships a paid order, with the carrier's tracking number when there is one.
    Ship {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tracking_number: Option<TrackingNumber>,
    },
    Deliver {},
    Cancel {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<Note>,
    },
    /// Changes the order's details by an RFC 7396 merge patch (see [`crate::details`]).
    UpdateDetails {
        details: DetailsPatch,
    },
    /// Replaces the order's shipping address whole. Idempotent by its nature: an address the
    /// order already has is applied without a change (no event, the version stays).
    SetShippingAddress {
        address: ShippingAddress,
    },
}

/// The command's type without its fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    Create,
    AddItem,
    RemoveItem,
    Reserve,
    Pay,
    Ship,
    Deliver,
    Cancel,
    UpdateDetails,
    SetShippingAddress,
}

impl Command {
    pub fn kind(&self) -> CommandKind {
        match self {
            Command::Create { .. } => CommandKind::Create,
            Command::AddItem { .. } => CommandKind::AddItem,
            Command::RemoveItem { .. } => CommandKind::RemoveItem,
            Command::Reserve {} => CommandKind::Reserve,
            Command::Pay {} => CommandKind::Pay,
            Command::Ship { .. } => CommandKind::Ship,
            Command::Deliver {} => CommandKind::Deliver,
            Command::Cancel { .. } => CommandKind::Cancel,
            Command::UpdateDetails { .. } => CommandKind::UpdateDetails,
            Command::SetShippingAddress { .. } => CommandKind::SetShippingAddress,
        }
    }
}

impl CommandKind {
    pub const ALL: [CommandKind; 10] = [
        CommandKind::Create,
        CommandKind::AddItem,
        CommandKind::RemoveItem,
        CommandKind::Reserve,
        CommandKind::Pay,
        CommandKind::Ship,
        CommandKind::Deliver,
        CommandKind::Cancel,
        CommandKind::UpdateDetails,
        CommandKind::SetShippingAddress,
    ];

    /// The spelling used on the wire and in the `commands.kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Create => "create",
            CommandKind::AddItem => "add_item",
            CommandKind::RemoveItem => "remove_item",
            CommandKind::Reserve => "reserve",
            CommandKind::Pay => "pay",
            CommandKind::Ship => "ship",
            CommandKind::Deliver => "deliver",
            CommandKind::Cancel => "cancel",
            CommandKind::UpdateDetails => "update_details",
            CommandKind::SetShippingAddress => "set_shipping_address",
        }
    }
}

impl std::str::FromStr for CommandKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown command kind {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn commands_round_trip_and_refuse_unknown_fields_and_types() {
        let add = json!({"type": "add_item", "sku": "A-1", "quantity": 2, "unit_price_cents": 150});
        let cmd: Command = serde_json::from_value(add.clone()).unwrap();
        assert_eq!(cmd.kind(), CommandKind::AddItem);
        assert_eq!(serde_json::to_value(&cmd).unwrap(), add);

        let pay: Command = serde_json::from_value(json!({"type": "pay"})).unwrap();
        assert_eq!(pay, Command::Pay {});
        assert!(serde_json::from_value::<Command>(json!({"type": "pay", "amount": 5})).is_err());
        assert!(serde_json::from_value::<Command>(json!({"type": "refund"})).is_err());
        assert!(serde_json::from_value::<Command>(json!({"sku": "A"})).is_err());
    }

    #[test]
    fn every_kind_spelling_parses_back() {
        for kind in CommandKind::ALL {
            assert_eq!(kind.as_str().parse::<CommandKind>().unwrap(), kind);
            assert_eq!(serde_json::to_value(kind).unwrap(), json!(kind.as_str()));
        }
    }
}
