//! Embeddings coalescing, the pure parts: which inputs a request carries (and whether it may
//! be combined with others), and how one combined answer's usage is shared back.

use serde_json::Value;

/// A request's `input`, as the list of items it embeds, and what kind they are (only items of
/// one kind can share a call). None: an input that is not combined (empty, or mixed).
pub fn items(input: &Value) -> Option<(&'static str, Vec<Value>)> {
    match input {
        Value::String(_) => Some(("text", vec![input.clone()])),
        Value::Array(a) if a.is_empty() => None,
        Value::Array(a) if a.iter().all(Value::is_string) => Some(("text", a.clone())),
        // One list of token ids is one item.
        Value::Array(a) if a.iter().all(Value::is_number) => Some(("tokens", vec![input.clone()])),
        Value::Array(a) if a.iter().all(|v| v.as_array().is_some_and(|t| t.iter().all(Value::is_number))) => {
            Some(("tokens", a.clone()))
        }
        _ => None,
    }
}

/// The size an item counts for when usage is shared: its text's bytes, or its token count.
pub fn weight(item: &Value) -> u64 {
    match item {
        Value::String(s) => s.len().max(1) as u64,
        Value::Array(t) => t.len().max(1) as u64,
        _ => 1,
    }
}

/// `total` shared in proportion to `weights`, in whole units that add up to `total` exactly
/// (largest remainders get the units left over; ties go to the earlier share).
pub fn split(total: u64, weights: &[u64]) -> Vec<u64> {
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if sum == 0 {
        return weights.iter().map(|_| 0).collect();
    }
    let exact: Vec<(u64, u128)> = weights
        .iter()
        .map(|&w| {
            let p = u128::from(total) * u128::from(w);
            ((p / sum) as u64, p % sum)
        })
        .collect();
    let mut shares: Vec<u64> = exact.iter().map(|&(s, _)| s).collect();
    let left = total - shares.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| exact[b].1.cmp(&exact[a].1).then(a.cmp(&b)));
    for &i in order.iter().take(left as usize) {
        shares[i] += 1;
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn inputs_of_one_kind_are_items() {
        assert_eq!(items(&json!("a")), Some(("text", vec![json!("a")])));
        assert_eq!(items(&json!(["a", "b"])).map(|(_, i)| i.len()), Some(2));
        assert_eq!(items(&json!([1, 2, 3])), Some(("tokens", vec![json!([1, 2, 3])])));
        assert_eq!(items(&json!([[1], [2, 3]])).map(|(k, i)| (k, i.len())), Some(("tokens", 2)));
        assert_eq!(items(&json!([])), None);
        assert_eq!(items(&json!(["a", 1])), None);
    }

    #[test]
    fn equal_weights_share_equally() {
        assert_eq!(split(64, &[1; 64]), vec![1; 64]);
        assert_eq!(split(10, &[1, 1, 1]), vec![4, 3, 3]);
        assert_eq!(split(7, &[2, 5]), vec![2, 5]);
    }

    proptest! {
        #[test]
        fn shares_always_add_up(total in 0u64..1_000_000, weights in proptest::collection::vec(0u64..10_000, 1..40)) {
            let s = split(total, &weights);
            let sum_w: u64 = weights.iter().sum();
            prop_assert_eq!(s.iter().sum::<u64>(), if sum_w == 0 { 0 } else { total });
        }
    }
}
