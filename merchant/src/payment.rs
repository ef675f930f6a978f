//! Charging: the trait a real processor implements, and a mock that records charges.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use ap2_mandate::Money;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// One charge, as the processor saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The processor's id for it.
    pub charge_id: String,
    /// Our order id: the idempotency key, so a retried charge is charged once.
    pub order_id: String,
    /// Exactly the cart's total.
    pub amount: Money,
}

/// Why a charge failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payment failed: {0}")]
pub struct PaymentError(pub String);

/// A payment processor.
pub trait PaymentProcessor: Send + Sync + 'static {
    /// Charges `amount` for `order_id`; the same order id charges at most once.
    fn charge<'a>(
        &'a self,
        order_id: &'a str,
        amount: Money,
    ) -> Pin<Box<dyn Future<Output = Result<Charge, PaymentError>> + Send + 'a>>;
}

/// How many charges the mock remembers: the oldest is forgotten past this, so a long-running
/// merchant does not grow without bound. A retry comes within `--stuck-order-secs` (120 s by
/// default), far inside this window at any rate the mock can take.
const MOCK_REMEMBERED: usize = 1_000_000;

/// Records charges in memory; idempotent by order id (a lookup by key, not a scan).
#[derive(Debug, Default)]
pub struct MockProcessor {
    charges: Mutex<Charges>,
}

#[derive(Debug, Default)]
struct Charges {
    by_order: HashMap<String, Charge>,
    /// Order ids oldest first, to forget the oldest past [`MOCK_REMEMBERED`].
    order: VecDeque<String>,
}

impl MockProcessor {
    /// The charges it remembers, oldest first.
    pub fn charges(&self) -> Vec<Charge> {
        self.charges
            .lock()
            .map(|c| {
                c.order
                    .iter()
                    .filter_map(|id| c.by_order.get(id).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl PaymentProcessor for MockProcessor {
    fn charge<'a>(
        &'a self,
        order_id: &'a str,
        amount: Money,
    ) -> Pin<Box<dyn Future<Output = Result<Charge, PaymentError>> + Send + 'a>> {
        Box::pin(async move {
            let mut charges = self
                .charges
                .lock()
                .map_err(|_| PaymentError("mock processor lock poisoned".into()))?;
            if let Some(existing) = charges.by_order.get(order_id) {
                return Ok(existing.clone());
            }
            // Random: unique across instances and restarts, as a processor's ids are.
            let mut id = [0u8; 12];
            aws_lc_rs::rand::fill(&mut id).map_err(|_| PaymentError("random failed".into()))?;
            let charge = Charge {
                charge_id: format!("ch_{}", URL_SAFE_NO_PAD.encode(id)),
                order_id: order_id.to_owned(),
                amount,
            };
            if charges.order.len() >= MOCK_REMEMBERED
                && let Some(oldest) = charges.order.pop_front()
            {
                charges.by_order.remove(&oldest);
            }
            charges.order.push_back(order_id.to_owned());
            charges.by_order.insert(order_id.to_owned(), charge.clone());
            Ok(charge)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(minor: u64) -> Money {
        Money::from_minor_units(minor, ap2_mandate::Currency::parse("USD").expect("USD"))
            .expect("amount")
    }

    #[tokio::test]
    async fn spec11_mock_charges_once_per_order_id() {
        let mock = MockProcessor::default();
        let first = mock.charge("ord_1", usd(100)).await.expect("charge");
        let again = mock.charge("ord_1", usd(100)).await.expect("charge");
        let other = mock.charge("ord_2", usd(100)).await.expect("charge");
        assert_eq!(first, again);
        assert_ne!(first.charge_id, other.charge_id);
        assert_eq!(mock.charges(), vec![first, other]);
    }
}
