//! A c=1 latency client that takes turns between targets request by request: a bench tool, not
//! a product. Each target gets one keep-alive connection; every cycle gives each a turn of
//! `--block` chat requests, in an order that rotates, and times it from the first byte written to the last byte of
//! the answer read. Whatever the machine does meanwhile (a neighbour's burst, a migration), it
//! does to all targets alike, so their percentiles can be compared even on a noisy host where
//! runs seconds apart cannot.
//!
//! ```text
//! paired_c1 --cycles N [--block N] [--warmup N] NAME=PORT[=KEY] ...
//! ```
//!
//! `--block N` sends N requests in a row to each target per turn (default 1; turns of 1, 10 and 50
//! measured the same on the bench machine, so cache effects of switching targets do not show). Prints one
//! JSON object: for each target its requests (and all it sent, with the warm-up's) and
//! p50/p90/p99/p99.9/max in µs. Answers
//! must carry a `Content-Length` (the bench's chat loads do) and status 200; anything else stops
//! the run with an error naming the target.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Instant;

const BODY: &str = r#"{"model":"bench","messages":[{"role":"user","content":"Say hello in five words."}],"max_tokens":16}"#;

struct Target {
    name: String,
    port: u16,
    request: Vec<u8>,
    conn: TcpStream,
    buf: Vec<u8>,
    micros: Vec<u32>,
    /// Requests answered, the warm-up's included.
    sent: usize,
}

impl Target {
    fn open(spec: &str) -> Result<Target, String> {
        let mut parts = spec.splitn(3, '=');
        let name = parts.next().unwrap_or_default().to_string();
        let port: u16 = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("target {spec:?}: expected NAME=PORT[=KEY]"))?;
        let auth = match parts.next() {
            Some(key) if !key.is_empty() => format!("Authorization: Bearer {key}\r\n"),
            _ => String::new(),
        };
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             Content-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{BODY}",
            BODY.len()
        )
        .into_bytes();
        Ok(Target {
            conn: connect(&name, port)?,
            name,
            port,
            request,
            buf: Vec::with_capacity(4096),
            micros: Vec::new(),
            sent: 0,
        })
    }

    /// One request on the kept-alive connection; its time in µs.
    fn send(&mut self) -> Result<u32, String> {
        let start = Instant::now();
        self.conn
            .write_all(&self.request)
            .map_err(|e| format!("{}: write: {e}", self.name))?;
        self.read_answer()?;
        self.sent += 1;
        Ok(start.elapsed().as_micros().min(u32::MAX as u128) as u32)
    }

    fn read_answer(&mut self) -> Result<(), String> {
        self.buf.clear();
        let (head_end, length) = loop {
            self.read_more("mid-answer")?;
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                break (end + 4, self.head(end)?);
            }
        };
        while self.buf.len() < head_end + length {
            self.read_more("mid-body")?;
        }
        if self.buf.len() > head_end + length {
            return Err(format!("{}: more bytes than its Content-Length", self.name));
        }
        Ok(())
    }

    /// Appends what the connection has; an error if it closed (`when`: where in the answer).
    fn read_more(&mut self, when: &str) -> Result<(), String> {
        let mut chunk = [0u8; 4096];
        let n = self
            .conn
            .read(&mut chunk)
            .map_err(|e| format!("{}: read: {e}", self.name))?;
        if n == 0 {
            return Err(format!("{}: connection closed {when}", self.name));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Checks the status line and returns the `Content-Length`.
    fn head(&self, end: usize) -> Result<usize, String> {
        let head = String::from_utf8_lossy(&self.buf[..end]);
        let status = head.lines().next().unwrap_or_default();
        if !status.starts_with("HTTP/1.1 200") {
            return Err(format!(
                "{} (port {}): answered {status:?}",
                self.name, self.port
            ));
        }
        head.lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .ok_or_else(|| format!("{}: answer without a Content-Length", self.name))
    }

    fn percentile(sorted: &[u32], p: f64) -> u32 {
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    fn json(&mut self) -> String {
        self.micros.sort_unstable();
        let s = &self.micros;
        let mean = s.iter().map(|&v| v as f64).sum::<f64>() / s.len().max(1) as f64;
        format!(
            r#""{}":{{"sent":{},"requests":{},"p50_us":{},"p90_us":{},"p99_us":{},"p999_us":{},"max_us":{},"mean_us":{:.1}}}"#,
            self.name,
            self.sent,
            s.len(),
            Self::percentile(s, 50.0),
            Self::percentile(s, 90.0),
            Self::percentile(s, 99.0),
            Self::percentile(s, 99.9),
            s.last().copied().unwrap_or(0),
            mean
        )
    }
}

fn connect(name: &str, port: u16) -> Result<TcpStream, String> {
    let conn = TcpStream::connect(("127.0.0.1", port))
        .map_err(|e| format!("{name}: connect to port {port}: {e}"))?;
    conn.set_nodelay(true)
        .map_err(|e| format!("{name}: TCP_NODELAY: {e}"))?;
    Ok(conn)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn run(args: Vec<String>) -> Result<String, String> {
    let mut cycles = 0usize;
    let mut warmup = 100usize;
    let mut block = 1usize;
    let mut targets = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut number = |flag: &str| -> Result<usize, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{flag} needs a number"))
        };
        match arg.as_str() {
            "--cycles" => cycles = number("--cycles")?,
            "--warmup" => warmup = number("--warmup")?,
            "--block" => block = number("--block")?.max(1),
            spec => targets.push(Target::open(spec)?),
        }
    }
    if cycles == 0 || targets.is_empty() {
        return Err(
            "usage: paired_c1 --cycles N [--block N] [--warmup N] NAME=PORT[=KEY] ...".into(),
        );
    }
    for _ in 0..warmup {
        for target in targets.iter_mut() {
            target.send()?;
        }
    }
    let n = targets.len();
    for cycle in 0..cycles {
        for i in 0..n {
            let target = &mut targets[(cycle + i) % n];
            for _ in 0..block {
                let micros = target.send()?;
                target.micros.push(micros);
            }
        }
    }
    let fields: Vec<String> = targets.iter_mut().map(Target::json).collect();
    Ok(format!("{{{}}}", fields.join(",")))
}

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("paired_c1: {err}");
            ExitCode::FAILURE
        }
    }
}
