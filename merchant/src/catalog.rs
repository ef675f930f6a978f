//! The product catalog: where prices come from (never from the caller).

use std::collections::HashMap;
use std::path::Path;

use ap2_mandate::Currency;
use serde::{Deserialize, Serialize};

/// One product.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Product {
    /// Stable id, used as the line item id.
    pub id: String,
    /// What the user sees.
    pub title: String,
    /// Minor units of `currency`.
    pub unit_price: u64,
    /// ISO 4217.
    pub currency: Currency,
}

/// The products a merchant sells, by id.
#[derive(Debug, Clone)]
pub struct Catalog {
    products: Vec<Product>,
    by_id: HashMap<String, usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    products: Vec<Product>,
}

impl Catalog {
    /// A catalog from its products; ids must be unique and prices within the protocol's range.
    pub fn new(products: Vec<Product>) -> anyhow::Result<Self> {
        let mut by_id = HashMap::new();
        for (i, p) in products.iter().enumerate() {
            anyhow::ensure!(
                !p.id.is_empty() && p.id.len() <= ap2_mandate::cart::MAX_ITEM_ID_LEN,
                "product id {:?} is empty or too long",
                p.id
            );
            anyhow::ensure!(
                p.unit_price <= ap2_mandate::money::MAX_MINOR_UNITS,
                "product {:?} is too expensive",
                p.id
            );
            anyhow::ensure!(
                by_id.insert(p.id.clone(), i).is_none(),
                "product {:?} twice",
                p.id
            );
        }
        Ok(Self { products, by_id })
    }

    /// Reads `{"products":[{"id","title","unit_price","currency"}]}`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let file: CatalogFile = serde_json::from_str(&text)?;
        Self::new(file.products)
    }

    /// The built-in demo catalog.
    pub fn demo() -> Self {
        let usd = Currency::parse("USD").ok();
        let products = usd
            .map(|usd| {
                [
                    ("shoe-001", "Trail Runner", 8999),
                    ("sock-10", "Wool socks", 450),
                    ("hat-7", "Sun hat", 1900),
                    ("bottle-3", "Water bottle", 1500),
                ]
                .into_iter()
                .map(|(id, title, unit_price)| Product {
                    id: id.into(),
                    title: title.into(),
                    unit_price,
                    currency: usd,
                })
                .collect()
            })
            .unwrap_or_default();
        Self::new(products).unwrap_or(Self {
            products: Vec::new(),
            by_id: HashMap::new(),
        })
    }

    /// A product by id.
    pub fn get(&self, id: &str) -> Option<&Product> {
        self.by_id.get(id).and_then(|i| self.products.get(*i))
    }

    /// Every product, in catalog order.
    pub fn products(&self) -> &[Product] {
        &self.products
    }
}
