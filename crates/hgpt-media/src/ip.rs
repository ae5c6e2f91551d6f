//! Classification of IP addresses that a download must never reach unless
//! private URLs are allowed (loopback, private networks, link-local, ...).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a download may not connect to `ip` (e.g. `"loopback"`), or `None` for
/// a public unicast address.
///
/// Refused: unspecified and `0.0.0.0/8`, loopback, private (`10/8`,
/// `172.16/12`, `192.168/16`), link-local (`169.254/16`, `fe80::/10`),
/// unique-local (`fc00::/7`), site-local (`fec0::/10`), CGNAT (`100.64/10`),
/// broadcast and reserved (`240/4`), multicast, and IPv6 addresses that embed
/// a refused IPv4 address (IPv4-mapped, IPv4-compatible, NAT64 `64:ff9b::/96`,
/// 6to4 `2002::/16`).
pub fn blocked_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(if ip.is_unspecified() || a == 0 {
        "unspecified"
    } else if ip.is_loopback() {
        "loopback"
    } else if ip.is_private() {
        "private"
    } else if ip.is_link_local() {
        "link-local"
    } else if a == 100 && (b & 0xc0) == 64 {
        "shared address space (CGNAT)"
    } else if ip.is_broadcast() {
        "broadcast"
    } else if ip.is_multicast() {
        "multicast"
    } else if a >= 240 {
        "reserved"
    } else {
        return None;
    })
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_reason(v4).map(|_| "IPv4-mapped non-public address");
    }
    let segments = ip.segments();
    let embedded_tail = || Ipv4Addr::from(((segments[6] as u32) << 16) | segments[7] as u32);
    Some(if ip.is_unspecified() {
        "unspecified"
    } else if ip.is_loopback() {
        "loopback"
    } else if segments[..6].iter().all(|s| *s == 0) {
        "IPv4-compatible (deprecated)"
    } else if segments[0] & 0xffc0 == 0xfe80 {
        "link-local"
    } else if segments[0] & 0xffc0 == 0xfec0 {
        "site-local"
    } else if segments[0] & 0xfe00 == 0xfc00 {
        "unique-local"
    } else if segments[0] & 0xff00 == 0xff00 {
        "multicast"
    } else if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        v4_reason(embedded_tail()).map(|_| "NAT64 of a non-public address")?
    } else if segments[0] == 0x2002 {
        let v4 = Ipv4Addr::from(((segments[1] as u32) << 16) | segments[2] as u32);
        v4_reason(v4).map(|_| "6to4 of a non-public address")?
    } else {
        return None;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(s: &str) -> bool {
        blocked_reason(s.parse().unwrap()).is_some()
    }

    #[test]
    fn refuses_every_non_public_v4_range() {
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.254",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "255.255.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
        ] {
            assert!(blocked(ip), "{ip} should be refused");
        }
    }

    #[test]
    fn allows_public_v4_next_to_the_ranges() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.1.1",
            "192.169.0.1",
            "11.0.0.1",
            "223.255.255.255",
        ] {
            assert!(!blocked(ip), "{ip} should be allowed");
        }
    }

    #[test]
    fn refuses_every_non_public_v6_range() {
        for ip in [
            "::",
            "::1",
            "fe80::1",
            "febf::1",
            "fc00::1",
            "fd12:3456::1",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:192.168.0.1",
            "::ffff:169.254.169.254",
            "::ffff:100.64.0.1",
            "::ffff:0.0.0.0",
            "::ffff:224.0.0.1",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "2002:7f00:1::1",
        ] {
            assert!(blocked(ip), "{ip} should be refused");
        }
    }

    #[test]
    fn allows_public_v6() {
        for ip in [
            "2001:4860:4860::8888",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(!blocked(ip), "{ip} should be allowed");
        }
    }

    #[test]
    fn names_the_reason() {
        assert_eq!(
            blocked_reason("127.0.0.1".parse().unwrap()),
            Some("loopback")
        );
        assert_eq!(
            blocked_reason("fd00::1".parse().unwrap()),
            Some("unique-local")
        );
        assert_eq!(
            blocked_reason("::ffff:10.0.0.1".parse().unwrap()),
            Some("IPv4-mapped non-public address")
        );
    }
}
