//! What may be relayed at all: the methods (GET, POST, DELETE) and the shape of the path (no
//! dot segments, empty segments or encoded slashes), checked before anything goes upstream.

use hyper::Method;

use crate::error::ApiError;

/// The methods relayed; `Allow` of the 405 lists them.
pub const ALLOWED_METHODS: &str = "GET, POST, DELETE";

/// Why a request may not be relayed.
#[derive(Debug, PartialEq, Eq)]
pub enum Unconfined {
    Method,
    DotSegment,
    EmptySegment,
    EncodedSlash,
    Backslash,
}

impl Unconfined {
    /// The answer to the client: 405, or a 400 naming the path and what to send instead.
    pub fn error(&self) -> ApiError {
        let path = |message: &str| ApiError::invalid("path", message);
        match self {
            Unconfined::Method => ApiError::MethodNotAllowed,
            Unconfined::DotSegment => {
                path("`.` and `..` segments (also as %2e) are not relayed; send the resolved path")
            }
            Unconfined::EmptySegment => {
                path("empty segments (`//`) are not relayed; send the path with single slashes")
            }
            Unconfined::EncodedSlash => {
                path("encoded slashes (%2f, %5c) are not relayed; send the path without them")
            }
            Unconfined::Backslash => {
                path("backslashes are not relayed; separate segments with `/`")
            }
        }
    }

    /// The reason stored in the call log.
    pub fn reason(&self) -> &'static str {
        match self {
            Unconfined::Method => "method not relayed (only GET, POST and DELETE are)",
            Unconfined::DotSegment => "path refused: dot segment",
            Unconfined::EmptySegment => "path refused: empty segment",
            Unconfined::EncodedSlash => "path refused: encoded slash or backslash",
            Unconfined::Backslash => "path refused: backslash",
        }
    }
}

/// Checks the method and the path (`/v1/…`, without its query) of a request to relay.
pub fn check(method: &Method, path: &str) -> Result<(), Unconfined> {
    if !matches!(*method, Method::GET | Method::POST | Method::DELETE) {
        return Err(Unconfined::Method);
    }
    check_path(path)
}

/// No allocation. A trailing slash is allowed (its empty last segment names nothing else);
/// `//` anywhere is not.
fn check_path(path: &str) -> Result<(), Unconfined> {
    let bytes = path.as_bytes();
    // Nearly every path has no dot, `%` or backslash: then only an empty segment (`//`) can
    // refuse it, and one scan for those bytes decides it without splitting into segments.
    if memchr::memchr3(b'.', b'%', b'\\', bytes).is_none() {
        return if bytes.windows(2).any(|pair| pair == b"//") {
            Err(Unconfined::EmptySegment)
        } else {
            Ok(())
        };
    }
    check_segments(path)
}

/// `check_path` for any path: segment by segment.
fn check_segments(path: &str) -> Result<(), Unconfined> {
    let bytes = path.as_bytes();
    if bytes.contains(&b'\\') {
        return Err(Unconfined::Backslash);
    }
    if memchr::memchr(b'%', bytes).is_some() {
        for window in bytes.windows(3) {
            if window[0] == b'%'
                && matches!(
                    (window[1], window[2].to_ascii_lowercase()),
                    (b'2', b'f') | (b'5', b'c')
                )
            {
                return Err(Unconfined::EncodedSlash);
            }
        }
    }
    let segments = path.strip_prefix('/').unwrap_or(path).split('/');
    let mut segments = segments.peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() && segments.peek().is_some() {
            return Err(Unconfined::EmptySegment);
        }
        if is_dot_segment(segment) {
            return Err(Unconfined::DotSegment);
        }
    }
    Ok(())
}

/// `.` or `..`, each dot possibly written `%2e`/`%2E`; a `;parameter` after it does not hide
/// it (some servers drop path parameters before resolving the path).
fn is_dot_segment(segment: &str) -> bool {
    let name = segment.split(';').next().unwrap_or(segment);
    let mut rest = name.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        rest = match rest {
            [b'.', tail @ ..] => tail,
            [b'%', b'2', b'e' | b'E', tail @ ..] => tail,
            _ => return false,
        };
        dots += 1;
    }
    matches!(dots, 1 | 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods() {
        for method in [Method::GET, Method::POST, Method::DELETE] {
            assert_eq!(check(&method, "/v1/models"), Ok(()));
        }
        for method in [
            "TRACE", "PUT", "PATCH", "HEAD", "OPTIONS", "CONNECT", "PROPFIND",
        ] {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            assert_eq!(check(&method, "/v1/models"), Err(Unconfined::Method));
        }
    }

    /// The shortcut for paths without a dot, `%` or backslash decides as the segment walk
    /// does, for every path of up to 6 bytes over an alphabet that makes each refusal.
    #[test]
    fn the_shortcut_agrees_with_the_segment_walk() {
        let alphabet = [b'/', b'a', b'.', b'%', b'2', b'e', b';', b'\\'];
        let mut paths = vec![Vec::new()];
        let mut checked = 0;
        for _ in 0..6 {
            let mut longer = Vec::new();
            for path in &paths {
                for &byte in &alphabet {
                    let mut next: Vec<u8> = path.clone();
                    next.push(byte);
                    let text = std::str::from_utf8(&next).unwrap();
                    assert_eq!(check_path(text), check_segments(text), "{text:?}");
                    checked += 1;
                    longer.push(next);
                }
            }
            paths = longer;
        }
        assert_eq!(checked, 299_592);
        assert_eq!(check_path("/v1//chat"), Err(Unconfined::EmptySegment));
        assert_eq!(check_path("//v1"), Err(Unconfined::EmptySegment));
        assert_eq!(check_path("/v1/chat/completions/"), Ok(()));
    }

    #[test]
    fn paths() {
        let ok = [
            "/v1/chat/completions",
            "/v1/models/",
            "/v1/files/file-abc.jsonl",
            "/v1/a..b",
            "/v1/...",
            "/v1/%2e%2e%2e",
            "/v1/models/ft%3Agpt-4o",
            "/v1/x%2",
        ];
        for path in ok {
            assert_eq!(check_path(path), Ok(()), "{path}");
        }
        let refused = [
            ("/v1/../../admin/secret", Unconfined::DotSegment),
            ("/v1/./models", Unconfined::DotSegment),
            ("/v1/models/..", Unconfined::DotSegment),
            ("/v1/%2e%2e/x", Unconfined::DotSegment),
            ("/v1/%2E%2E/x", Unconfined::DotSegment),
            ("/v1/.%2e/x", Unconfined::DotSegment),
            ("/v1/%2e/x", Unconfined::DotSegment),
            ("/v1/..;x/admin", Unconfined::DotSegment),
            ("/v1//x", Unconfined::EmptySegment),
            ("/v1/x//", Unconfined::EmptySegment),
            ("/v1/a%2fb", Unconfined::EncodedSlash),
            ("/v1/a%2Fb", Unconfined::EncodedSlash),
            ("/v1/a%5cb", Unconfined::EncodedSlash),
            ("/v1/a%5Cb", Unconfined::EncodedSlash),
            ("/v1/a\\..\\b", Unconfined::Backslash),
        ];
        for (path, why) in refused {
            assert_eq!(check_path(path), Err(why), "{path}");
        }
    }
}
