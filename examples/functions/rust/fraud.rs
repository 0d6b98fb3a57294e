---
[dependencies]
serde_json = "1"
---
// A fraud rule: the running sum of each account's transactions, alerted once above a threshold.
// A transaction is a JSON line such as {"account": "a17", "amount": 120.5}. The dependencies
// above (a cargo-script front matter) are fetched and built with the function.

use serde_json::Value;

const THRESHOLD: f64 = 10_000.0;

fn transaction(line: &str) -> Result<Value, String> {
    serde_json::from_str(line).map_err(|error| format!("not a transaction: {error}: {line}"))
}

pub fn key(line: &str) -> Result<String, String> {
    match transaction(line)?["account"].as_str() {
        Some(account) => Ok(account.to_owned()),
        None => Err(format!("a transaction without an account: {line}")),
    }
}

pub fn reduce(total: Option<&str>, line: &str, _account: &str) -> Result<String, String> {
    let total: f64 = total.map_or(Ok(0.0), str::parse).map_err(|error| format!("a total that is not a number: {error}"))?;
    let amount = transaction(line)?["amount"].as_f64().unwrap_or(0.0);
    Ok((total + amount).to_string())
}

pub fn filter(total: &str) -> bool {
    total.parse::<f64>().is_ok_and(|total| total > THRESHOLD)
}
