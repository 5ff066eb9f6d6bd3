//! PROXY protocol headers (v1 text and v2 binary) from trusted load balancers.
//!
//! A load balancer such as HAProxy that passes connections on (and may end TLS for clients
//! openserver will not speak to, such as TLS 1.0) puts a PROXY header in front of the stream
//! naming the client's address. A connection from a trusted proxy (`server.trusted_proxies`)
//! must start with one; from anywhere else, the first bytes are the session's own and a header
//! there breaks the framing (or the TLS handshake) like any other garbage, closing it.
//!
//! The header is read to its last byte and not one byte further, so that what follows (frames,
//! or a TLS ClientHello) is left on the socket for the session. The parsing itself is the
//! `ppp` crate's; what is here is finding where the header ends without reading past it, with
//! a bound on its size that is checked before anything is read into memory.

use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 header's first 12 bytes.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The v2 header's fixed part: signature, version/command, family/protocol, length.
const V2_FIXED: usize = 16;
/// A v1 header is at most 107 bytes, CRLF included (the specification's bound).
const V1_MAX: usize = 107;
/// The shortest v1 header, `PROXY UNKNOWN\r\n`.
const V1_MIN: usize = 15;
/// Read first: both versions are longer than this, and it tells them apart.
const PREFIX: usize = 8;

/// The networks whose connections carry a PROXY header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Trusts connections from these networks.
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        TrustedProxies(nets.into_iter().collect())
    }

    /// Whether no proxy is trusted (the default: PROXY headers are refused).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a connection from `ip` must start with a PROXY header. An IPv4 address seen
    /// through an IPv6 socket (`::ffff:a.b.c.d`) matches its IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// Why a trusted proxy's connection was closed before its session started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyHeaderError {
    /// The connection did not start with a PROXY header.
    #[error(
        "connection from a trusted proxy does not start with a PROXY protocol header \
         (send-proxy-v2 in HAProxy; or remove the address from server.trusted_proxies)"
    )]
    Missing,
    /// The header is longer than `limits.max_proxy_header`.
    #[error("PROXY header of {0} bytes is longer than limits.max_proxy_header ({1})")]
    TooLong(usize, usize),
    /// The header does not follow the PROXY protocol.
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    /// The stream ended (or failed) inside the header.
    #[error("connection ended inside the PROXY header: {0}")]
    Truncated(String),
}

/// What the next read needs, given the header bytes so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Exactly this many more bytes, none of them past the header's end.
    More(usize),
    /// The header is complete.
    Done,
}

/// How many more bytes the header `buf` needs, never more than it has left: a reader that
/// reads exactly that much never takes a byte of the session's stream.
fn need(buf: &[u8], max: usize) -> Result<Need, ProxyHeaderError> {
    if buf.len() < PREFIX {
        return Ok(Need::More(PREFIX - buf.len()));
    }
    if buf.starts_with(b"PROXY ") {
        if buf.ends_with(b"\r\n") {
            return Ok(Need::Done);
        }
        if buf.len() >= V1_MAX.min(max) {
            return Err(ProxyHeaderError::TooLong(buf.len() + 1, V1_MAX.min(max)));
        }
        if buf.len() < V1_MIN {
            return Ok(Need::More(V1_MIN - buf.len()));
        }
        // A header ends in CRLF: after a CR, one byte may end it; otherwise at least two.
        return Ok(Need::More(if buf.ends_with(b"\r") { 1 } else { 2 }));
    }
    if buf[..PREFIX] == V2_SIGNATURE[..PREFIX] {
        if buf.len() < V2_FIXED {
            return Ok(Need::More(V2_FIXED - buf.len()));
        }
        if buf[..12] != V2_SIGNATURE {
            return Err(ProxyHeaderError::Malformed("bad v2 signature".into()));
        }
        let total = V2_FIXED + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if total > max {
            return Err(ProxyHeaderError::TooLong(total, max));
        }
        return Ok(match total - buf.len() {
            0 => Need::Done,
            n => Need::More(n),
        });
    }
    Err(ProxyHeaderError::Missing)
}

/// The client's address from a complete header; `None` to keep the connection's own (v2
/// LOCAL, a proxy's health check; v1 UNKNOWN; addresses that are not IP).
fn parse(header: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    if header.starts_with(b"PROXY ") {
        use ppp::v1::Addresses;
        let parsed = ppp::v1::Header::try_from(header)
            .map_err(|e| ProxyHeaderError::Malformed(e.to_string()))?;
        if parsed.header.len() != header.len() {
            return Err(ProxyHeaderError::Malformed("bytes after the CRLF".into()));
        }
        return Ok(match parsed.addresses {
            Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            Addresses::Unknown => None,
        });
    }
    use ppp::v2::{Addresses, Command};
    let parsed = ppp::v2::Header::try_from(header)
        .map_err(|e| ProxyHeaderError::Malformed(e.to_string()))?;
    if parsed.command == Command::Local {
        return Ok(None);
    }
    Ok(match parsed.addresses {
        Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Unspecified | Addresses::Unix(_) => None,
    })
}

/// Reads one PROXY header from the start of `stream`, to its last byte and no further, and
/// returns the client's address (`None`: keep the connection's own). At most `max` bytes
/// (`limits.max_proxy_header`) are ever held; the caller bounds the time.
pub(crate) async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut buf = Vec::with_capacity(PREFIX.max(V1_MIN));
    loop {
        match need(&buf, max)? {
            Need::Done => return parse(&buf),
            Need::More(n) => {
                let start = buf.len();
                buf.resize(start + n, 0);
                stream
                    .read_exact(&mut buf[start..])
                    .await
                    .map_err(|e| ProxyHeaderError::Truncated(e.to_string()))?;
            }
        }
    }
}

/// The header at the start of `data`, read the way `read_header` reads a socket: its
/// length and the client's address. For the fuzz target and tests.
pub fn header_from_bytes(
    data: &[u8],
    max: usize,
) -> Result<(usize, Option<SocketAddr>), ProxyHeaderError> {
    let mut len = 0;
    loop {
        match need(&data[..len], max)? {
            Need::Done => return parse(&data[..len]).map(|addr| (len, addr)),
            Need::More(n) if len + n <= data.len() => len += n,
            Need::More(_) => return Err(ProxyHeaderError::Truncated("early eof".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 536;

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend(((addresses.len() + tlvs.len()) as u16).to_be_bytes());
        h.extend(addresses);
        h.extend(tlvs);
        h
    }

    #[test]
    fn v1_tcp4_and_tcp6_name_the_client() {
        let h = b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 21843\r\nSU";
        assert_eq!(
            header_from_bytes(h, MAX).unwrap(),
            (h.len() - 2, Some("192.0.2.7:51234".parse().unwrap()))
        );
        let h = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 21843\r\n";
        assert_eq!(
            header_from_bytes(h, MAX).unwrap().1,
            Some("[2001:db8::7]:4000".parse().unwrap())
        );
        assert_eq!(
            header_from_bytes(b"PROXY UNKNOWN\r\n", MAX).unwrap(),
            (15, None)
        );
    }

    #[test]
    fn v2_proxy_names_the_client_and_local_keeps_the_proxy() {
        let addrs = [192, 0, 2, 7, 10, 0, 0, 1, 0xc8, 0x22, 0x55, 0x53];
        // A NOOP TLV as HAProxy may add; skipped.
        let h = v2(1, 0x11, &addrs, &[4, 0, 1, 0]);
        let mut stream = h.clone();
        stream.extend([0x16, 0x03, 0x01]);
        assert_eq!(
            header_from_bytes(&stream, MAX).unwrap(),
            (h.len(), Some("192.0.2.7:51234".parse().unwrap()))
        );
        assert_eq!(
            header_from_bytes(&v2(0, 0, &[], &[]), MAX).unwrap(),
            (16, None)
        );
    }

    #[test]
    fn bad_headers_are_refused_without_reading_far() {
        let err = |data: &[u8]| header_from_bytes(data, MAX).unwrap_err();
        assert_eq!(err(b"SU\x03\0\0\0\0\0\x01"), ProxyHeaderError::Missing);
        assert!(matches!(
            err(b"PROXY TCP4 1.2.3"),
            ProxyHeaderError::Truncated(_)
        ));
        assert!(matches!(
            err(b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n"),
            ProxyHeaderError::Malformed(_)
        ));
        assert!(matches!(
            err(&[b"PROXY ".as_slice(), &[b'x'; 200]].concat()),
            ProxyHeaderError::TooLong(..)
        ));
        // A v2 length beyond the bound is refused from the fixed part alone.
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend([0x21, 0x11, 0xff, 0xff]);
        assert_eq!(err(&huge), ProxyHeaderError::TooLong(16 + 0xffff, MAX));
        let mut bad_version = v2(1, 0x11, &[0; 12], &[]);
        bad_version[12] = 0x31;
        assert!(matches!(err(&bad_version), ProxyHeaderError::Malformed(_)));
        // Too short for its family's addresses.
        assert!(matches!(
            err(&v2(1, 0x11, &[0; 4], &[])),
            ProxyHeaderError::Malformed(_)
        ));
    }

    #[tokio::test]
    async fn the_reader_leaves_the_sessions_bytes_on_the_stream() {
        for header in [
            b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 21843\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2(1, 0x11, &[192, 0, 2, 7, 10, 0, 0, 1, 0, 1, 0, 2], &[]),
        ] {
            let mut data = header.clone();
            data.extend(b"\r\nSU rest");
            let mut stream = &data[..];
            read_header(&mut stream, MAX).await.unwrap();
            assert_eq!(stream, b"\r\nSU rest");
        }
    }

    #[test]
    fn trusted_networks_match_mapped_addresses() {
        let trusted =
            TrustedProxies::new(["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]);
        assert!(trusted.contains("10.1.2.3".parse().unwrap()));
        assert!(trusted.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(trusted.contains("::1".parse().unwrap()));
        assert!(!trusted.contains("192.0.2.1".parse().unwrap()));
        assert!(TrustedProxies::default().is_empty());
    }
}
