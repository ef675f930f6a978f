//! Exact money: ISO 4217 currencies and amounts as integer minor units, never floats.

use std::fmt;
use std::str::FromStr;

/// The largest amount, in minor units, that the protocol accepts.
///
/// Carts are hashed through RFC 8785, which writes numbers the way ECMAScript does; integers
/// above 2^53 − 1 have no exact IEEE 754 form there, so two different totals could share one
/// canonical form. Capping every amount at 2^53 − 1 keeps the hash exact.
pub const MAX_MINOR_UNITS: u64 = (1 << 53) - 1;

/// An ISO 4217 currency that has a minor-unit exponent (so not XAU, XDR and the like).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    iso: iso_currency::Currency,
    exponent: u8,
}

/// Why a string is not a currency code this protocol accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CurrencyError {
    /// The code is not three upper-case ASCII letters (`usd`, `US`, `USD ` are refused).
    #[error("a currency is three upper-case letters (ISO 4217 alpha-3)")]
    NotAlpha3,
    /// Three letters, but no ISO 4217 currency has that code.
    #[error("unknown ISO 4217 currency code")]
    Unknown,
    /// An ISO 4217 code with no minor unit (precious metals, SDR, test codes): not money to pay with.
    #[error("ISO 4217 gives this code no minor unit, so it cannot be used for payments")]
    NoMinorUnit,
}

impl Currency {
    /// Parses an ISO 4217 alpha-3 code. Case matters: the SPEC asks for upper case.
    pub fn parse(code: &str) -> Result<Self, CurrencyError> {
        let bytes = code.as_bytes();
        if bytes.len() != 3 || !bytes.iter().all(u8::is_ascii_uppercase) {
            return Err(CurrencyError::NotAlpha3);
        }
        let iso = iso_currency::Currency::from_code(code).ok_or(CurrencyError::Unknown)?;
        let exponent = iso
            .exponent()
            .and_then(|e| u8::try_from(e).ok())
            .ok_or(CurrencyError::NoMinorUnit)?;
        Ok(Self { iso, exponent })
    }

    /// The alpha-3 code, e.g. `"USD"`.
    pub fn code(&self) -> &'static str {
        self.iso.code()
    }

    /// How many fraction digits a decimal amount in this currency has (USD 2, JPY 0, BHD 3).
    pub fn exponent(&self) -> u8 {
        self.exponent
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Currency {
    type Err = CurrencyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

impl<'de> serde::Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&code).map_err(serde::de::Error::custom)
    }
}

/// Why a decimal string is not an exact amount of a currency. Each malformed form of SPEC §2
/// has its own variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MoneyError {
    /// `""`.
    #[error("the amount is empty")]
    Empty,
    /// `"+1.00"`, `"-1.00"`: amounts carry no sign.
    #[error("an amount has no sign")]
    Sign,
    /// `"1e3"`, `"1.5E2"`: exponent notation.
    #[error("an amount is written without exponent notation")]
    ExponentNotation,
    /// `"01.00"`: a leading zero before other integer digits.
    #[error("an amount has no leading zeros")]
    LeadingZero,
    /// `".50"`: no digit before the decimal point.
    #[error("an amount has at least one digit before the decimal point")]
    MissingIntegerPart,
    /// `"89"` for USD: the currency has minor units, so the fraction must be written.
    #[error("the amount needs exactly {expected} fraction digits")]
    MissingFraction {
        /// The currency's exponent.
        expected: u8,
    },
    /// `"89.9"` or `"89.999"` for USD, `"89."` for anything.
    #[error("the amount needs exactly {expected} fraction digits, found {found}")]
    FractionDigits {
        /// The currency's exponent.
        expected: u8,
        /// The digits written after the point.
        found: usize,
    },
    /// `"1200.0"` or `"1200."` for JPY: the currency has no minor unit.
    #[error("this currency has no minor unit, so the amount has no decimal point")]
    UnexpectedFraction,
    /// `"1.2.3"`.
    #[error("an amount has at most one decimal point")]
    MultipleDecimalPoints,
    /// Anything but ASCII digits and one `.`: spaces, commas, `_`, other scripts' digits.
    #[error("an amount has only the digits 0-9 and one decimal point")]
    InvalidCharacter,
    /// More than [`MAX_MINOR_UNITS`] minor units.
    #[error("the amount is too large (at most 2^53-1 minor units)")]
    Overflow,
}

/// An exact amount of one currency, held as integer minor units (cents for USD, yen for JPY).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    minor_units: u64,
    currency: Currency,
}

impl Money {
    /// An amount of `minor_units` (e.g. 8999 for USD 89.99); refused above [`MAX_MINOR_UNITS`].
    pub fn from_minor_units(minor_units: u64, currency: Currency) -> Result<Self, MoneyError> {
        if minor_units > MAX_MINOR_UNITS {
            return Err(MoneyError::Overflow);
        }
        Ok(Self {
            minor_units,
            currency,
        })
    }

    /// Parses the SPEC §2 decimal form: digits, then exactly the currency's fraction digits.
    pub fn parse(decimal: &str, currency: Currency) -> Result<Self, MoneyError> {
        let exponent = currency.exponent();
        let bytes = decimal.as_bytes();
        let Some(&first) = bytes.first() else {
            return Err(MoneyError::Empty);
        };
        if first == b'+' || first == b'-' {
            return Err(MoneyError::Sign);
        }
        if bytes.iter().any(|b| matches!(b, b'e' | b'E')) {
            return Err(MoneyError::ExponentNotation);
        }
        if let Some(bad) = bytes.iter().find(|b| !b.is_ascii_digit() && **b != b'.') {
            return Err(if *bad == b'+' || *bad == b'-' {
                MoneyError::Sign
            } else {
                MoneyError::InvalidCharacter
            });
        }
        let (int_part, frac_part) = match decimal.split_once('.') {
            Some((_, frac)) if frac.contains('.') => return Err(MoneyError::MultipleDecimalPoints),
            Some((int, frac)) => (int, Some(frac)),
            None => (decimal, None),
        };
        if int_part.is_empty() {
            return Err(MoneyError::MissingIntegerPart);
        }
        if int_part.len() > 1 && int_part.starts_with('0') {
            return Err(MoneyError::LeadingZero);
        }
        match (exponent, frac_part) {
            (0, Some(_)) => return Err(MoneyError::UnexpectedFraction),
            (0, None) => {}
            (expected, None) => return Err(MoneyError::MissingFraction { expected }),
            (expected, Some(frac)) if frac.len() != usize::from(expected) => {
                return Err(MoneyError::FractionDigits {
                    expected,
                    found: frac.len(),
                });
            }
            (_, Some(_)) => {}
        }
        let minor_units = int_part
            .bytes()
            .chain(frac_part.unwrap_or("").bytes())
            .try_fold(0u64, |acc, digit| {
                acc.checked_mul(10)?
                    .checked_add(u64::from(digit - b'0'))
                    .filter(|v| *v <= MAX_MINOR_UNITS)
            })
            .ok_or(MoneyError::Overflow)?;
        Ok(Self {
            minor_units,
            currency,
        })
    }

    /// The amount in minor units.
    pub fn minor_units(&self) -> u64 {
        self.minor_units
    }

    /// The currency.
    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// The SPEC §2 decimal string: `"89.99"` for USD 8999, `"1200"` for JPY 1200.
    pub fn to_decimal_string(&self) -> String {
        self.to_string()
    }
}

/// Writes the SPEC §2 decimal form (no currency code), the exact inverse of [`Money::parse`].
impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exponent = u32::from(self.currency.exponent());
        if exponent == 0 {
            return write!(f, "{}", self.minor_units);
        }
        let scale = 10u64.pow(exponent);
        write!(
            f,
            "{}.{:0width$}",
            self.minor_units / scale,
            self.minor_units % scale,
            width = exponent as usize
        )
    }
}

impl fmt::Debug for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    fn cur(code: &str) -> Currency {
        Currency::parse(code).unwrap()
    }

    #[test]
    fn spec2_money_usd_has_two_minor_digits() {
        assert_eq!(Money::parse("89.99", usd()).unwrap().minor_units(), 8999);
        assert_eq!(Money::parse("0.50", usd()).unwrap().minor_units(), 50);
        assert_eq!(Money::parse("0.00", usd()).unwrap().minor_units(), 0);
    }

    #[test]
    fn spec2_money_jpy_has_no_minor_digits() {
        assert_eq!(
            Money::parse("1200", cur("JPY")).unwrap().minor_units(),
            1200
        );
        assert_eq!(
            Money::parse("1200.0", cur("JPY")),
            Err(MoneyError::UnexpectedFraction)
        );
        assert_eq!(
            Money::parse("1200.", cur("JPY")),
            Err(MoneyError::UnexpectedFraction)
        );
    }

    #[test]
    fn spec2_money_bhd_has_three_minor_digits() {
        assert_eq!(
            Money::parse("1.250", cur("BHD")).unwrap().minor_units(),
            1250
        );
        assert_eq!(
            Money::parse("1.25", cur("BHD")),
            Err(MoneyError::FractionDigits {
                expected: 3,
                found: 2
            })
        );
    }

    #[test]
    fn spec2_money_refuses_exponent_notation() {
        assert_eq!(
            Money::parse("1e3", usd()),
            Err(MoneyError::ExponentNotation)
        );
        assert_eq!(
            Money::parse("8.999E1", usd()),
            Err(MoneyError::ExponentNotation)
        );
    }

    #[test]
    fn spec2_money_refuses_sign() {
        assert_eq!(Money::parse("-1.00", usd()), Err(MoneyError::Sign));
        assert_eq!(Money::parse("+1.00", usd()), Err(MoneyError::Sign));
        assert_eq!(Money::parse("1.-0", usd()), Err(MoneyError::Sign));
    }

    #[test]
    fn spec2_money_refuses_leading_zeros() {
        assert_eq!(Money::parse("01.00", usd()), Err(MoneyError::LeadingZero));
        assert_eq!(Money::parse("00.50", usd()), Err(MoneyError::LeadingZero));
        assert_eq!(
            Money::parse("012", cur("JPY")),
            Err(MoneyError::LeadingZero)
        );
    }

    #[test]
    fn spec2_money_refuses_missing_or_extra_fraction_digits() {
        assert_eq!(
            Money::parse("89", usd()),
            Err(MoneyError::MissingFraction { expected: 2 })
        );
        assert_eq!(
            Money::parse("89.9", usd()),
            Err(MoneyError::FractionDigits {
                expected: 2,
                found: 1
            })
        );
        assert_eq!(
            Money::parse("89.999", usd()),
            Err(MoneyError::FractionDigits {
                expected: 2,
                found: 3
            })
        );
        assert_eq!(
            Money::parse("89.", usd()),
            Err(MoneyError::FractionDigits {
                expected: 2,
                found: 0
            })
        );
        assert_eq!(
            Money::parse(".50", usd()),
            Err(MoneyError::MissingIntegerPart)
        );
    }

    #[test]
    fn spec2_money_refuses_other_characters() {
        for bad in [
            " 1.00", "1.00 ", "1,00", "1_000.00", "١.٠٠", "0x10", "NaN", "1.0O",
        ] {
            assert_eq!(
                Money::parse(bad, usd()),
                Err(MoneyError::InvalidCharacter),
                "{bad:?}"
            );
        }
        assert_eq!(Money::parse("", usd()), Err(MoneyError::Empty));
        assert_eq!(
            Money::parse("1.0.0", usd()),
            Err(MoneyError::MultipleDecimalPoints)
        );
    }

    #[test]
    fn spec2_money_overflow_is_an_error() {
        assert_eq!(
            Money::parse("90071992547409.91", usd())
                .unwrap()
                .minor_units(),
            MAX_MINOR_UNITS
        );
        assert_eq!(
            Money::parse("90071992547409.92", usd()),
            Err(MoneyError::Overflow)
        );
        assert_eq!(
            Money::parse("99999999999999999999999999.00", usd()),
            Err(MoneyError::Overflow)
        );
        assert_eq!(
            Money::from_minor_units(MAX_MINOR_UNITS + 1, usd()),
            Err(MoneyError::Overflow)
        );
    }

    #[test]
    fn spec2_money_formats_back_exactly() {
        for (s, code) in [
            ("89.99", "USD"),
            ("0.05", "USD"),
            ("1200", "JPY"),
            ("0", "JPY"),
            ("1.250", "BHD"),
            ("0.0001", "CLF"),
        ] {
            assert_eq!(Money::parse(s, cur(code)).unwrap().to_string(), s);
        }
    }

    #[test]
    fn spec2_currency_is_iso4217_alpha3_upper_case() {
        assert_eq!(usd().exponent(), 2);
        assert_eq!(Currency::parse("usd"), Err(CurrencyError::NotAlpha3));
        assert_eq!(Currency::parse("US"), Err(CurrencyError::NotAlpha3));
        assert_eq!(Currency::parse("USD "), Err(CurrencyError::NotAlpha3));
        assert_eq!(Currency::parse("ÜSD"), Err(CurrencyError::NotAlpha3));
        assert_eq!(Currency::parse("ZZZ"), Err(CurrencyError::Unknown));
        assert_eq!(Currency::parse("XAU"), Err(CurrencyError::NoMinorUnit));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn any_currency() -> impl Strategy<Value = Currency> {
            prop::sample::select(vec!["USD", "EUR", "JPY", "BHD", "KWD", "CLF", "KRW", "GBP"])
                .prop_map(|c| Currency::parse(c).unwrap())
        }

        proptest! {
            #[test]
            fn money_round_trips_through_its_decimal_form(
                units in 0..=MAX_MINOR_UNITS,
                currency in any_currency(),
            ) {
                let money = Money::from_minor_units(units, currency).unwrap();
                let text = money.to_string();
                prop_assert_eq!(Money::parse(&text, currency), Ok(money));
            }

            #[test]
            fn money_parsing_never_panics(s in "\\PC{0,40}", currency in any_currency()) {
                let _ = Money::parse(&s, currency);
            }

            #[test]
            fn money_parsing_of_number_like_strings_is_exact(
                s in "[0-9.eE+-]{0,24}",
                currency in any_currency(),
            ) {
                if let Ok(money) = Money::parse(&s, currency) {
                    prop_assert_eq!(money.to_string(), s);
                }
            }

            #[test]
            fn currency_parsing_never_panics(s in "\\PC{0,6}") {
                let _ = Currency::parse(&s);
            }
        }
    }
}
