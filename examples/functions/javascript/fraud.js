// A fraud rule: the running sum of each account's transactions, alerted once above a threshold.
// A transaction is a JSON line such as {"account": "a17", "amount": 120.5}.
const THRESHOLD = 10000;

export function key(line) {
  return JSON.parse(line).account;
}

export function reduce(total, line) {
  return String(Number(total ?? 0) + Number(JSON.parse(line).amount));
}

export function filter(total) {
  return Number(total) > THRESHOLD;
}
