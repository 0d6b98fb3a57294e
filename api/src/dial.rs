//! Addresses to dial instead of the advertised ones. A node advertises one address to everyone;
//! behind a NAT, or with the chaos harness's fault proxy on every link, a particular node must
//! reach a peer somewhere else. Empty by default: dial what is advertised.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Advertised address -> the address this process dials for it.
#[derive(Debug, Clone, Default)]
pub struct DialAddresses(Arc<BTreeMap<String, String>>);

impl DialAddresses {
    pub fn new(routes: BTreeMap<String, String>) -> Self {
        DialAddresses(Arc::new(routes))
    }

    /// Where to connect to reach `advertised`.
    pub fn resolve<'a>(&'a self, advertised: &'a str) -> &'a str {
        self.0.get(advertised).map_or(advertised, String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_replace_only_the_addresses_they_name() {
        let dial = DialAddresses::new([("10.0.0.2:7101".to_owned(), "127.0.0.1:9000".to_owned())].into());
        assert_eq!(dial.resolve("10.0.0.2:7101"), "127.0.0.1:9000");
        assert_eq!(dial.resolve("10.0.0.3:7101"), "10.0.0.3:7101");
        assert_eq!(DialAddresses::default().resolve("a:1"), "a:1");
    }
}
