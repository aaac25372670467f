//! The client's IP: the peer address, or X-Forwarded-For when the peer is a trusted proxy.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Walks X-Forwarded-For from the nearest hop back while each hop is a trusted proxy; the
/// first untrusted hop is the client. A hop that does not parse ends the walk: the last hop
/// known good (a trusted proxy, or the peer) is then the client. IPv4-mapped IPv6 addresses
/// (`::ffff:1.2.3.4`) count as the IPv4 address. No allocation.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = peer.ip().to_canonical();
    if !is_trusted(&client) {
        return client;
    }
    // Several X-Forwarded-For fields form one list, in order: the nearest hop is the last.
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(text) = value.to_str() else {
            return client;
        };
        for hop in text.rsplit(',') {
            let Some(ip) = parse_hop(hop) else {
                return client;
            };
            client = ip;
            if !is_trusted(&ip) {
                return client;
            }
        }
    }
    client
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.trim()
        .parse::<IpAddr>()
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let headers = xff(&["203.0.113.9, 10.0.0.2"]);
        let proxy: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(client_ip(proxy, &headers, &trusted), ip("203.0.113.9"));
        assert_eq!(client_ip(proxy, &headers, &[]), ip("10.0.0.1"));
        let stranger: SocketAddr = "198.51.100.7:1".parse().unwrap();
        assert_eq!(client_ip(stranger, &headers, &trusted), ip("198.51.100.7"));
    }

    #[test]
    fn the_walk_stops_at_the_first_hop_that_does_not_parse() {
        let proxy: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // A forged left part cannot be reached past garbage: the last good hop is the client.
        let headers = xff(&["198.51.100.1, garbage, 10.0.0.3"]);
        assert_eq!(client_ip(proxy, &headers, &trusted), ip("10.0.0.3"));
        // Garbage right at the nearest hop: the peer itself.
        let headers = xff(&["198.51.100.1, 1.2.3.4:80"]);
        assert_eq!(client_ip(proxy, &headers, &trusted), ip("10.0.0.1"));
        let headers = xff(&["198.51.100.1,"]);
        assert_eq!(client_ip(proxy, &headers, &trusted), ip("10.0.0.1"));
        // Every hop trusted: the farthest one.
        let headers = xff(&["10.0.0.9, 10.0.0.3"]);
        assert_eq!(client_ip(proxy, &headers, &trusted), ip("10.0.0.9"));
        // Several fields are one list, the last field nearest.
        let headers = xff(&["203.0.113.5", "10.0.0.7"]);
        assert_eq!(client_ip(proxy, &headers, &trusted), ip("203.0.113.5"));
        assert_eq!(
            client_ip(proxy, &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn ipv4_mapped_addresses_are_canonical() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // A mapped peer is matched against IPv4 proxy ranges.
        let mapped_proxy: SocketAddr = "[::ffff:10.0.0.1]:5000".parse().unwrap();
        let headers = xff(&["::ffff:203.0.113.9, ::ffff:10.0.0.2"]);
        assert_eq!(
            client_ip(mapped_proxy, &headers, &trusted),
            ip("203.0.113.9")
        );
        let mapped_stranger: SocketAddr = "[::ffff:198.51.100.7]:1".parse().unwrap();
        assert_eq!(
            client_ip(mapped_stranger, &headers, &trusted),
            ip("198.51.100.7")
        );
    }
}
