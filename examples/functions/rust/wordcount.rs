// The word count's logic as Rust functions: split a line into words, count each word.
// `raftstream job submit` builds this file for wasm32 with the guest library around it.

pub fn flat_map(line: &str) -> Vec<&str> {
    line.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| !word.is_empty())
        .collect()
}

pub fn reduce(count: Option<&str>, _word: &str, _key: &str) -> String {
    let count: u64 = count.and_then(|count| count.parse().ok()).unwrap_or(0);
    (count + 1).to_string()
}
