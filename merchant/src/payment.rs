//! Charging: the trait a real processor implements, and a mock that records charges.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use ap2_mandate::Money;

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

/// Records charges in memory; idempotent by order id.
#[derive(Debug, Default)]
pub struct MockProcessor {
    charges: Mutex<Vec<Charge>>,
}

impl MockProcessor {
    /// Every charge made.
    pub fn charges(&self) -> Vec<Charge> {
        self.charges.lock().map(|c| c.clone()).unwrap_or_default()
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
            if let Some(existing) = charges.iter().find(|c| c.order_id == order_id) {
                return Ok(existing.clone());
            }
            let charge = Charge {
                charge_id: format!("ch_{}", charges.len() + 1),
                order_id: order_id.to_owned(),
                amount,
            };
            charges.push(charge.clone());
            Ok(charge)
        })
    }
}
