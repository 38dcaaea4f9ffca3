//! Money: prices, cost estimates and each client's monthly budget, in integer micro-dollars.
//! Pure: the month and amounts are arguments.

use serde::Serialize;

/// Micro-dollars (1 USD = 1,000,000).
pub type Micros = i64;

pub fn usd_to_micros(usd: f64) -> Option<Micros> {
    let m = (usd * 1e6).round();
    (usd.is_finite() && usd >= 0.0 && m < 1e15).then_some(m as Micros)
}

pub fn micros_to_usd(m: Micros) -> f64 {
    m as f64 / 1e6
}

/// A model's price per 1,000 tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Price {
    pub input_per_1k: Micros,
    pub output_per_1k: Micros,
}

impl Price {
    /// Rounded up, so many small requests never add up to less than they cost.
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> Micros {
        let total =
            prompt_tokens as i128 * self.input_per_1k as i128 + completion_tokens as i128 * self.output_per_1k as i128;
        ((total + 999) / 1000).min(i64::MAX as i128) as Micros
    }
}

/// One client's budget this month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ledger {
    /// None = no budget.
    pub limit: Option<Micros>,
    pub month: u32,
    /// Settled this month.
    pub spent: Micros,
    /// Held for requests in flight.
    pub reserved: Micros,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverBudget {
    pub limit: Micros,
    pub spent: Micros,
    pub reserved: Micros,
    pub asked: Micros,
}

impl Ledger {
    pub fn new(limit: Option<Micros>, month: u32, spent: Micros) -> Self {
        Ledger { limit, month, spent, reserved: 0 }
    }

    /// A new calendar month starts from zero spend.
    fn roll(&mut self, month: u32) {
        if month != self.month {
            self.month = month;
            self.spent = 0;
        }
    }

    /// Holds `amount` for a request, or refuses if it could take the total past the budget.
    pub fn reserve(&mut self, amount: Micros, month: u32) -> Result<(), OverBudget> {
        self.roll(month);
        if let Some(limit) = self.limit {
            if self.spent + self.reserved + amount > limit {
                return Err(OverBudget { limit, spent: self.spent, reserved: self.reserved, asked: amount });
            }
        }
        self.reserved += amount;
        Ok(())
    }

    /// Replaces a reservation with what the request really cost.
    pub fn settle(&mut self, reserved: Micros, actual: Micros, month: u32) {
        self.roll(month);
        self.reserved = (self.reserved - reserved).max(0);
        self.spent += actual;
    }

    pub fn remaining(&self) -> Option<Micros> {
        self.limit.map(|l| (l - self.spent - self.reserved).max(0))
    }

    /// Share of the budget spent or held, in percent.
    pub fn used_percent(&self) -> Option<u32> {
        self.limit.filter(|&l| l > 0).map(|l| (((self.spent + self.reserved) as i128 * 100) / l as i128) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn prices_are_exact_integers() {
        let p = Price { input_per_1k: usd_to_micros(0.03).unwrap(), output_per_1k: usd_to_micros(0.06).unwrap() };
        assert_eq!(p.input_per_1k, 30_000);
        assert_eq!(p.cost(1000, 1000), 90_000);
        assert_eq!(p.cost(1, 0), 30);
        // 1 token at $0.0015/1k is 1.5 µ$: rounded up.
        assert_eq!(Price { input_per_1k: 1500, output_per_1k: 0 }.cost(1, 0), 2);
        assert_eq!(usd_to_micros(-1.0), None);
        assert_eq!(usd_to_micros(f64::NAN), None);
        assert_eq!(usd_to_micros(250.0), Some(250_000_000));
    }

    #[test]
    fn a_new_month_resets_spend_but_not_holds() {
        let mut l = Ledger::new(Some(100), 5, 90);
        assert!(l.reserve(20, 5).is_err());
        l.reserve(10, 5).unwrap();
        assert_eq!(l.remaining(), Some(0));
        // The month turns with 10 held: spend starts over, the hold stays until settled.
        l.reserve(50, 6).unwrap();
        assert_eq!((l.spent, l.reserved), (0, 60));
        l.settle(10, 7, 6);
        assert_eq!((l.spent, l.reserved), (7, 50));
        assert_eq!(l.used_percent(), Some(57));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Reserve(Micros),
        /// Settle the nth open reservation with this share (0–100 %) of it.
        Settle(usize, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![(0i64..5_000).prop_map(Op::Reserve), (0usize..64, 0u8..=100).prop_map(|(i, p)| Op::Settle(i, p))]
    }

    proptest! {
        /// Whatever the order of reservations and settlements, while no request costs more
        /// than it reserved, spend plus holds never pass the budget.
        #[test]
        fn never_overspends(limit in 0i64..50_000, ops in proptest::collection::vec(op(), 0..200)) {
            let mut l = Ledger::new(Some(limit), 1, 0);
            let mut open: Vec<Micros> = Vec::new();
            for op in ops {
                match op {
                    Op::Reserve(a) => {
                        let before = l.clone();
                        match l.reserve(a, 1) {
                            Ok(()) => open.push(a),
                            Err(_) => prop_assert_eq!(&l, &before, "a refusal changes nothing"),
                        }
                    }
                    Op::Settle(i, pct) if !open.is_empty() => {
                        let held = open.swap_remove(i % open.len());
                        l.settle(held, held * pct as i64 / 100, 1);
                    }
                    Op::Settle(..) => {}
                }
                prop_assert!(l.spent + l.reserved <= limit, "{:?}", l);
                prop_assert_eq!(l.reserved, open.iter().sum::<Micros>());
            }
        }
    }
}
