//! Which network targets `http` phases may reach: public addresses, plus what the operator
//! lists in `[security] http_allow`. Loopback, link-local, private and other special ranges
//! are refused unless listed, so a phase cannot be turned against the host or its network.
//! Checked on the URL and again on every address the name resolves to when connecting.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// One `http_allow` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    /// A host name, trusted whatever it resolves to (on `port`, or any).
    Host { name: String, port: Option<u16> },
    /// An address range (a single address is a /32 or /128), on `port` or any.
    Net {
        base: IpAddr,
        prefix: u8,
        port: Option<u16>,
    },
}

/// Why an `http_allow` entry was not understood.
#[derive(Debug, thiserror::Error)]
#[error("[security] http_allow entry `{0}` is not host, host:port, IP, IP:port or CIDR")]
pub struct BadEntry(String);

/// The operator's allowlist.
#[derive(Clone, Debug, Default)]
pub struct TargetPolicy {
    entries: Vec<Entry>,
}

impl TargetPolicy {
    /// Parses the entries of `[security] http_allow`.
    pub fn new(entries: &[String]) -> Result<Self, BadEntry> {
        let entries = entries
            .iter()
            .map(|raw| parse_entry(raw.trim()).ok_or_else(|| BadEntry(raw.clone())))
            .collect::<Result<_, _>>()?;
        Ok(Self { entries })
    }

    /// Whether the operator trusts the host name itself (so its addresses are not checked).
    pub fn trusts_name(&self, host: &str, port: u16) -> bool {
        self.entries.iter().any(|entry| match entry {
            Entry::Host { name, port: p } => {
                name.eq_ignore_ascii_case(host) && p.is_none_or(|p| p == port)
            }
            Entry::Net { .. } => false,
        })
    }

    /// Whether `ip` (on `port`, when known) may be reached.
    pub fn allows(&self, ip: IpAddr, port: Option<u16>) -> bool {
        let ip = canonical(ip);
        let listed = self.entries.iter().any(|entry| match entry {
            Entry::Net {
                base,
                prefix,
                port: p,
            } => in_net(ip, *base, *prefix) && (p.is_none() || port.is_none() || *p == port),
            Entry::Host { .. } => false,
        });
        listed || is_public(ip)
    }
}

fn parse_entry(raw: &str) -> Option<Entry> {
    if raw.is_empty() {
        return None;
    }
    if let Some((net, prefix)) = raw.split_once('/') {
        let base: IpAddr = net.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        return (prefix <= max).then_some(Entry::Net {
            base: canonical(base),
            prefix,
            port: None,
        });
    }
    if let Ok(ip) = raw.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Some(single(ip, None));
    }
    if let Ok(address) = raw.parse::<SocketAddr>() {
        return Some(single(address.ip(), Some(address.port())));
    }
    let (name, port) = match raw.rsplit_once(':') {
        Some((name, port)) => (name, Some(port.parse().ok()?)),
        None => (raw, None),
    };
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    valid.then(|| Entry::Host {
        name: name.to_ascii_lowercase(),
        port,
    })
}

fn single(ip: IpAddr, port: Option<u16>) -> Entry {
    let ip = canonical(ip);
    Entry::Net {
        base: ip,
        prefix: if ip.is_ipv4() { 32 } else { 128 },
        port,
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_net(ip: IpAddr, base: IpAddr, prefix: u8) -> bool {
    match (ip, base) {
        (IpAddr::V4(ip), IpAddr::V4(base)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(base) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(base)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(base) & mask
        }
        _ => false,
    }
}

/// Globally routable: not loopback, private, link-local, shared, documentation, multicast …
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || first == 0x2001 && ip.segments()[1] == 0x0db8
        || first == 0x0064 && ip.segments()[1] == 0xff9b)
}

/// A resolver that drops every address the policy refuses, so a name that resolves (or is
/// re-pointed) to a private address cannot be reached; trusted names pass unchanged.
#[derive(Clone)]
pub struct GuardedResolver {
    policy: Arc<TargetPolicy>,
}

impl GuardedResolver {
    /// A resolver enforcing `policy`.
    pub fn new(policy: Arc<TargetPolicy>) -> Self {
        Self { policy }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        let lookup: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let trusted = policy.entries.iter().any(|entry| {
                matches!(entry, Entry::Host { name, .. } if name.eq_ignore_ascii_case(&host))
            });
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|address| trusted || policy.allows(address.ip(), None))
                .collect();
            if allowed.is_empty() {
                return Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("`{host}` resolves only to addresses outside [security] http_allow"),
                ))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        });
        lookup
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> TargetPolicy {
        TargetPolicy::new(&entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn special_ranges_are_refused_unless_listed() {
        let none = policy(&[]);
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!none.allows(ip.parse().unwrap(), Some(80)), "{ip}");
        }
        assert!(none.allows("93.184.216.34".parse().unwrap(), Some(80)));
        let listed = policy(&["127.0.0.1:8080", "10.0.0.0/8", "svc.internal"]);
        assert!(listed.allows("127.0.0.1".parse().unwrap(), Some(8080)));
        assert!(!listed.allows("127.0.0.1".parse().unwrap(), Some(22)));
        assert!(listed.allows("10.9.9.9".parse().unwrap(), Some(1)));
        assert!(listed.trusts_name("SVC.internal", 443));
        assert!(!listed.trusts_name("other.internal", 443));
    }

    #[test]
    fn bad_entries_are_refused() {
        assert!(TargetPolicy::new(&["10.0.0.0/99".into()]).is_err());
        assert!(TargetPolicy::new(&["host:port".into()]).is_err());
        assert!(TargetPolicy::new(&["".into()]).is_err());
    }
}
