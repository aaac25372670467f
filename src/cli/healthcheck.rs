//! `keygate healthcheck`: asks the keygate serving at KEYGATE_LISTEN for `/healthz` and exits 0
//! on a 200 (for container health checks: no curl in the image).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The whole check (connect, ask, read the status line) must end within this.
const WITHIN: Duration = Duration::from_secs(5);

/// Ok when `/healthz` at `listen` answers 200; the error says what it answered or why not.
pub async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let addr = reachable(listen);
    let status = tokio::time::timeout(WITHIN, status_line(addr))
        .await
        .with_context(|| format!("http://{addr}/healthz did not answer within {WITHIN:?}"))??;
    if status.split(' ').nth(1) != Some("200") {
        bail!("http://{addr}/healthz answered `{status}`");
    }
    crate::log_output::tell(&format!("http://{addr}/healthz: {status}\n"));
    Ok(())
}

/// A wildcard listen address is reached on loopback.
fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, listen.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, listen.port()).into(),
        _ => listen,
    }
}

/// The status line of `GET /healthz` at `addr`.
async fn status_line(addr: SocketAddr) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| {
            format!("cannot connect to {addr} (is keygate serving there? KEYGATE_LISTEN)")
        })?;
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next().unwrap_or_default().trim().to_string();
    if !line.starts_with("HTTP/") {
        bail!("{addr} did not answer HTTP");
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_are_reached_on_loopback() {
        assert_eq!(
            reachable("0.0.0.0:8000".parse().unwrap()),
            "127.0.0.1:8000".parse().unwrap()
        );
        assert_eq!(
            reachable("[::]:8000".parse().unwrap()),
            "[::1]:8000".parse().unwrap()
        );
        assert_eq!(
            reachable("10.1.2.3:8000".parse().unwrap()),
            "10.1.2.3:8000".parse().unwrap()
        );
    }
}
