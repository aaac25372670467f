//! One webhook POST over HTTP/1.1 (TLS by rustls for https): `Connection: close`, and only
//! the status line of the answer is read.

use std::time::Duration;

use anyhow::{bail, Context};
use hyper::Uri;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// The longest answer head read.
const MAX_HEAD: usize = 16 * 1024;

/// Where a webhook goes, parsed once from its URL.
pub struct Target {
    host: String,
    port: u16,
    authority: String,
    path: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Target {
    /// An http(s) URL with a host and no user info (Config checked it).
    pub fn new(url: &str) -> anyhow::Result<Target> {
        let uri: Uri = url.parse().context("not a URL")?;
        let secure = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => bail!("must be an http:// or https:// URL"),
        };
        let authority = uri.authority().context("has no host")?;
        if authority.as_str().contains('@') {
            bail!("must not carry a user name or password (put a token in the path instead)");
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            bail!("has no host");
        }
        let tls = if secure {
            let name = ServerName::try_from(host.clone())
                .with_context(|| format!("`{host}` is not a valid TLS server name"))?;
            Some((crate::relay::upstream::tls_connector()?, name))
        } else {
            None
        };
        Ok(Target {
            port: authority
                .port_u16()
                .unwrap_or(if secure { 443 } else { 80 }),
            host,
            authority: authority.as_str().to_string(),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
            tls,
        })
    }

    /// The host, for logs (the path may carry a token).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// POSTs `body` with `headers`; the answer's status code.
    pub async fn post(
        &self,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> anyhow::Result<u16> {
        tokio::time::timeout(timeout, self.exchange(headers, body))
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))?
    }

    async fn exchange(&self, headers: &[(&str, &str)], body: &[u8]) -> anyhow::Result<u16> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .context("cannot connect")?;
        tcp.set_nodelay(true)?;
        let mut head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: keygate/{}\r\n",
            self.path,
            self.authority,
            body.len(),
            env!("CARGO_PKG_VERSION")
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        match &self.tls {
            None => exchange_on(tcp, head.as_bytes(), body).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .context("TLS handshake failed")?;
                exchange_on(tls, head.as_bytes(), body).await
            }
        }
    }
}

async fn exchange_on<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    head: &[u8],
    body: &[u8],
) -> anyhow::Result<u16> {
    stream.write_all(head).await.context("cannot send")?;
    stream.write_all(body).await.context("cannot send")?;
    stream.flush().await.context("cannot send")?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(_) =
            response.parse(&buf).context("the answer is not HTTP/1.1")?
        {
            return response.code.context("the answer has no status");
        }
        if buf.len() >= MAX_HEAD {
            bail!("the answer's head is over {MAX_HEAD} bytes");
        }
        let mut chunk = [0u8; 2048];
        let read = stream
            .read(&mut chunk)
            .await
            .context("cannot read the answer")?;
        if read == 0 {
            bail!("the connection closed before an answer");
        }
        buf.extend_from_slice(&chunk[..read]);
    }
}
