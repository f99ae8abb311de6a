//! Which network addresses count as public, for the guard against server-side request
//! forgery: URLs that tenants configure must not reach the hub's own network (loopback, the
//! VPC, link-local metadata endpoints) unless the operator allows it for local use. And the
//! one way outbound URLs escape a value put into a path segment or a query string.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`).
const RESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// `s` percent-encoded except for unreserved characters: safe as one path segment (a `/`
/// or `?` in it cannot change the path) and as a query value.
pub fn encode_unreserved(s: &str) -> String {
    utf8_percent_encode(s, RESERVED).to_string()
}

/// Whether `ip` is a globally routable unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0 // "this network"
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || (a == 169 && b == 254) // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 192 && b == 168)
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // documentation
        || (a == 203 && b == 0 && c == 113) // documentation
        || a >= 224) // multicast, reserved, broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00 // multicast
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0])) // discard-only
}

/// The IPv4 address inside IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`)
/// and NAT64 (`64:ff9b::a.b.c.d`) addresses: they reach that IPv4 host.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let mapped = s[..5] == [0; 5] && s[5] == 0xffff;
    let compatible = s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1);
    let nat64 = s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4];
    (mapped || compatible || nat64).then_some(tail)
}

/// The host of `url` when it names a non-public target without asking DNS: an IP literal in
/// a non-public range, or `localhost`. Names are checked when they are resolved. The URL is
/// parsed the way the HTTP client parses it, so `http://2130706433/` is 127.0.0.1.
pub fn non_public_host(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let ip = match parsed.host()? {
        url::Host::Ipv4(ip) => IpAddr::V4(ip),
        url::Host::Ipv6(ip) => IpAddr::V6(ip),
        // Schemes the WHATWG parser does not know (smtp://) keep IPv4 literals as names.
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") {
                return Some(name);
            }
            name.parse().ok()?
        }
    };
    (!is_public(ip)).then(|| ip.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_encoded_as_one_segment() {
        // API Gateway's connection ids end in `=`.
        assert_eq!(encode_unreserved("L0SM9cOFvHcCIhw="), "L0SM9cOFvHcCIhw%3D");
        assert_eq!(encode_unreserved("zylker-inc_1.0~"), "zylker-inc_1.0~");
        assert_eq!(encode_unreserved("a/b?c d"), "a%2Fb%3Fc%20d");
        assert_eq!(encode_unreserved("ü"), "%C3%BC");
    }

    #[test]
    fn private_loopback_link_local_and_special_ranges_are_not_public() {
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "127.0.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.168.1.1",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::10.0.0.1",
            "64:ff9b::a00:1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} must not count as public");
        }
        for ip in ["1.1.1.1", "8.8.8.8", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(ip.parse().unwrap()), "{ip} is public");
        }
    }

    #[test]
    fn literal_hosts_are_read_the_way_the_http_client_reads_them() {
        let cases = [
            ("http://127.0.0.1:8080/hook", Some("127.0.0.1")),
            ("http://2130706433/", Some("127.0.0.1")),
            ("http://0x7f.1/", Some("127.0.0.1")),
            ("http://[::1]/x", Some("::1")),
            ("http://[::ffff:a9fe:a9fe]/latest/meta-data", Some("::ffff:169.254.169.254")),
            ("https://169.254.169.254/latest/meta-data/", Some("169.254.169.254")),
            ("http://user:pw@10.0.0.5/", Some("10.0.0.5")),
            ("http://LOCALHOST./", Some("localhost")),
            ("http://api.localhost/", Some("api.localhost")),
            ("smtp://192.168.0.10:25", Some("192.168.0.10")),
            ("https://desk.example.com/v1", None),
            ("https://8.8.8.8/", None),
            ("not a url", None),
        ];
        for (url, want) in cases {
            assert_eq!(non_public_host(url).as_deref(), want, "{url}");
        }
    }
}
