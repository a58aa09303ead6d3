//! What a webhook endpoint may be, and which events it receives: shared by the API (which checks
//! an endpoint when it is registered) and the worker (which checks every address it connects to,
//! after resolving the name, so that a name cannot be pointed somewhere private later).

use orderflow_domain::CommandKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use url::{Host, Url};

/// The longest URL an endpoint may have.
pub const MAX_URL_LEN: usize = 2048;

/// The statuses a command's event can carry: `command.<status>.<command type>`.
const STATUSES: [&str; 3] = ["applied", "rejected", "failed"];

/// Whether `pattern` names event types: an exact one (`command.applied.pay`) or every type of
/// one status (`command.rejected.*`).
pub fn valid_event_type(pattern: &str) -> bool {
    let Some(rest) = pattern.strip_prefix("command.") else {
        return false;
    };
    let Some((status, kind)) = rest.split_once('.') else {
        return false;
    };
    STATUSES.contains(&status)
        && (kind == "*" || CommandKind::ALL.iter().any(|k| k.as_str() == kind))
}

/// Whether an endpoint that asked for `patterns` (none: every event) receives `event_type`.
pub fn wants(patterns: &[String], event_type: &str) -> bool {
    patterns.is_empty()
        || patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => event_type.starts_with(prefix),
            None => p == event_type,
        })
}

/// Checks an endpoint's URL: `https` to a public host; plain `http`, loopback and private
/// addresses only when `allow_private` (an operator's choice, for endpoints inside their own
/// network and for tests). A host given by name is checked again, address by address, by the
/// worker when it connects ([`is_public`]). Says what is wrong, for a person to read.
pub fn check_url(raw: &str, allow_private: bool) -> Result<Url, String> {
    if raw.len() > MAX_URL_LEN {
        return Err(format!("url: longer than {MAX_URL_LEN} characters"));
    }
    let url = Url::parse(raw).map_err(|e| format!("url: not an absolute URL ({e})"))?;
    // What is stored and requested is the parsed form, which percent-encodes: it must fit too.
    if url.as_str().len() > MAX_URL_LEN {
        return Err(format!(
            "url: longer than {MAX_URL_LEN} characters once percent-encoded"
        ));
    }
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        "http" => {
            return Err(
                "url: must be https (plain http only when the operator allows \
                        private endpoints)"
                    .into(),
            );
        }
        other => return Err(format!("url: must be https, not {other}")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("url: must not carry a user name or password".into());
    }
    if url.fragment().is_some() {
        return Err("url: must not have a fragment".into());
    }
    let private = match url.host() {
        None => return Err("url: has no host".into()),
        Some(Host::Ipv4(ip)) => !is_public(IpAddr::V4(ip)),
        Some(Host::Ipv6(ip)) => !is_public(IpAddr::V6(ip)),
        Some(Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost") || !name.contains('.')
        }
    };
    if private && !allow_private {
        return Err(format!(
            "url: {} is not a public host (private and loopback endpoints only when the \
             operator allows them)",
            url.host_str().unwrap_or_default()
        ));
    }
    Ok(url)
}

/// Whether `ip` is an address on the public internet: not loopback, private, link-local,
/// shared (carrier-grade NAT), documentation, benchmarking, multicast, broadcast, reserved or
/// unspecified; an IPv4 address inside IPv6 (mapped, compatible, NAT64) is judged as IPv4.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => is_public_v6(ip),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (RFC 6598)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking (RFC 2544)
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    // NAT64 (64:ff9b::/96) and IPv4-compatible (::a.b.c.d) carry an IPv4 address.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || (segments[..6] == [0; 6] && segments[6] != 0)
    {
        let [a, b] = segments[6].to_be_bytes();
        let [c, d] = segments[7].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00 // unique local
        || (segments[0] & 0xffc0) == 0xfe80 // link-local
        || (segments[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
        || (segments[0] == 0x64 && segments[1] == 0xff9b && segments[2] == 1) // local NAT64 (RFC 8215)
        || (segments[0] == 0x2001 && segments[1] < 0x0200) // IETF protocol assignments (Teredo, ...)
        || segments[0] == 0x2002 // 6to4: an IPv4 address inside
        || segments[0] == 0x0100 && segments[1..4] == [0, 0, 0]) // discard-only
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(ip: &str) -> bool {
        is_public(ip.parse().unwrap())
    }

    #[test]
    fn only_public_addresses_are_public() {
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(public(ip), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "64:ff9b:1::a00:1",
        ] {
            assert!(!public(ip), "{ip}");
        }
    }

    #[test]
    fn an_endpoint_is_https_to_a_public_host_unless_private_ones_are_allowed() {
        assert!(check_url("https://hooks.example.com/orderflow?x=1", false).is_ok());
        assert!(check_url("https://93.184.216.34:8443/h", false).is_ok());
        for (url, why) in [
            ("http://hooks.example.com/", "must be https"),
            ("ftp://hooks.example.com/", "must be https, not ftp"),
            (
                "https://user:pw@hooks.example.com/",
                "user name or password",
            ),
            ("https://hooks.example.com/#x", "fragment"),
            ("https://127.0.0.1/", "not a public host"),
            ("https://[::1]/", "not a public host"),
            ("https://10.1.2.3/", "not a public host"),
            ("https://169.254.169.254/latest", "not a public host"),
            ("https://localhost/", "not a public host"),
            ("https://api.localhost./", "not a public host"),
            ("https://intranet/", "not a public host"),
            ("https://0x7f000001/", "not a public host"),
            ("not a url", "not an absolute URL"),
            ("data:text/plain,hi", "must be https, not data"),
        ] {
            let refused = check_url(url, false).unwrap_err();
            assert!(refused.contains(why), "{url}: {refused}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(check_url(&long, false).unwrap_err().contains("longer than"));
        // Short as typed, long once percent-encoded (é is 2 bytes raw, %C3%A9 stored).
        let encoded = format!("https://example.com/{}", "é".repeat(700));
        assert!(encoded.len() <= MAX_URL_LEN);
        assert!(
            check_url(&encoded, false)
                .unwrap_err()
                .contains("percent-encoded")
        );
        for url in [
            "http://127.0.0.1:8080/hook",
            "https://localhost/",
            "http://10.0.0.5/",
        ] {
            assert!(check_url(url, true).is_ok(), "{url}");
        }
        assert!(check_url("ftp://127.0.0.1/", true).is_err());
    }

    #[test]
    fn event_types_are_exact_or_every_type_of_a_status() {
        for ok in [
            "command.applied.pay",
            "command.rejected.*",
            "command.failed.create",
        ] {
            assert!(valid_event_type(ok), "{ok}");
        }
        for bad in [
            "",
            "*",
            "command.*",
            "command.applied",
            "command.applied.refund_all",
            "command.done.pay",
            "order.applied.pay",
            "command.applied.pay.more",
        ] {
            assert!(!valid_event_type(bad), "{bad}");
        }
        let some = vec![
            "command.rejected.*".to_owned(),
            "command.applied.pay".to_owned(),
        ];
        assert!(wants(&some, "command.rejected.reserve"));
        assert!(wants(&some, "command.applied.pay"));
        assert!(!wants(&some, "command.applied.create"));
        assert!(wants(&[], "command.failed.ship"));
    }
}
