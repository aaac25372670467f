//! Adds `stream_options.include_usage: true` to a request body by splicing its bytes (never
//! re-serialising it), and takes the splice back out of the encoded request when needed.

use std::ops::Range;

use crate::relay::json_scan::{key_text, walk_object};

const MEMBER: &[u8] = br#""stream_options":{"include_usage":true}"#;
const OBJECT: &[u8] = br#"{"include_usage":true}"#;
const INNER: &[u8] = br#""include_usage":true"#;

/// The one edit made to a request body: the `removed` bytes at `at` replaced by
/// `inserted_len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Splice {
    at: usize,
    removed: Vec<u8>,
    inserted_len: usize,
    /// The original body's length.
    body_len: usize,
}

/// `body` with `include_usage: true` in its `stream_options`, and the edit made; `None` when
/// the client asked for usage itself, or `stream_options` is not an object or null (the
/// upstream will judge such a request as it is). `stream_options` and `end` come from
/// `RequestSummary` (the value's range, the closing brace of the body's object).
pub fn include_usage(
    body: &[u8],
    stream_options: Option<Range<usize>>,
    end: usize,
) -> Option<(Vec<u8>, Splice)> {
    let Some(options) = stream_options else {
        // Last member: a parser that keeps the last of repeated keys takes this one.
        return Some(edit(body, end..end, &[b",", MEMBER]));
    };
    let raw = &body[options.clone()];
    if raw == b"null" {
        return Some(edit(body, options, &[OBJECT]));
    }
    let mut include_usage = None;
    let mut members = 0;
    let close = walk_object(raw, |member| {
        members += 1;
        if &*key_text(member.key) == b"include_usage" {
            include_usage = Some(member.value);
        }
    })?;
    let shift = |range: Range<usize>| options.start + range.start..options.start + range.end;
    match include_usage {
        Some(value) if &raw[value.clone()] == b"true" => None,
        Some(value) => Some(edit(body, shift(value), &[b"true"])),
        None => {
            let at = options.start + close;
            let comma: &[u8] = if members == 0 { b"" } else { b"," };
            Some(edit(body, at..at, &[comma, INNER]))
        }
    }
}

/// `body` with `range` replaced by the concatenation of `pieces`.
fn edit(body: &[u8], range: Range<usize>, pieces: &[&[u8]]) -> (Vec<u8>, Splice) {
    let inserted_len: usize = pieces.iter().map(|piece| piece.len()).sum();
    let mut spliced = Vec::with_capacity(body.len() - range.len() + inserted_len);
    spliced.extend_from_slice(&body[..range.start]);
    for piece in pieces {
        spliced.extend_from_slice(piece);
    }
    spliced.extend_from_slice(&body[range.end..]);
    let splice = Splice {
        at: range.start,
        removed: body[range].to_vec(),
        inserted_len,
        body_len: body.len(),
    };
    (spliced, splice)
}

impl Splice {
    /// Turns `wire`, an encoded request whose body is the spliced one (`http1::encode_request`
    /// ends its head with `content-length`), back into the request the client sent. False
    /// (and `wire` untouched) if `wire` is not such a request.
    pub fn undo(&self, wire: &mut Vec<u8>) -> bool {
        let spliced_len = self.body_len - self.removed.len() + self.inserted_len;
        let Some(body_start) = wire.len().checked_sub(spliced_len) else {
            return false;
        };
        let mut digits = itoa::Buffer::new();
        let old_line_len = b"content-length: ".len() + digits.format(spliced_len).len() + 4;
        let Some(line_start) = body_start.checked_sub(old_line_len) else {
            return false;
        };
        let mut expected = b"content-length: ".to_vec();
        expected.extend_from_slice(digits.format(spliced_len).as_bytes());
        expected.extend_from_slice(b"\r\n\r\n");
        if wire[line_start..body_start] != expected[..] || wire[..line_start].last() != Some(&b'\n')
        {
            return false;
        }
        let at = body_start + self.at;
        wire.splice(at..at + self.inserted_len, self.removed.iter().copied());
        let mut line = b"content-length: ".to_vec();
        line.extend_from_slice(digits.format(self.body_len).as_bytes());
        line.extend_from_slice(b"\r\n\r\n");
        wire.splice(line_start..body_start, line);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::record::RequestSummary;

    fn splice(body: &str) -> Option<String> {
        let summary = RequestSummary::read(body.as_bytes());
        let (spliced, _) = include_usage(body.as_bytes(), summary.stream_options, summary.end?)?;
        Some(String::from_utf8(spliced).unwrap())
    }

    /// The spliced body parses, and says what the original said plus include_usage:true.
    fn check(body: &str) -> String {
        let spliced = splice(body).unwrap_or_else(|| panic!("no splice for {body}"));
        let mut before: serde_json::Value = serde_json::from_str(body).unwrap();
        let after: serde_json::Value = serde_json::from_str(&spliced).unwrap();
        let options = &mut before["stream_options"];
        if !options.is_object() {
            *options = serde_json::json!({});
        }
        options["include_usage"] = true.into();
        assert_eq!(after, before, "{spliced}");
        spliced
    }

    #[test]
    fn stream_options_absent_is_added_as_the_last_member() {
        assert_eq!(
            check(r#"{"model":"m","stream":true}"#),
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#
        );
        assert_eq!(
            check("{ \"stream\" : true ,\n \"messages\" : [ {\"content\": \"} \\\" {\"} ] \n}\n"),
            "{ \"stream\" : true ,\n \"messages\" : [ {\"content\": \"} \\\" {\"} ] \n,\"stream_options\":{\"include_usage\":true}}\n"
        );
    }

    #[test]
    fn include_usage_false_or_other_values_become_true() {
        assert_eq!(
            check(r#"{"stream":true,"stream_options":{"include_usage":false}}"#),
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#
        );
        assert_eq!(
            check(r#"{"stream_options": { "include_usage" :  null , "x":1 },"stream":true}"#),
            r#"{"stream_options": { "include_usage" :  true , "x":1 },"stream":true}"#
        );
        // An escaped key is the same key.
        assert_eq!(
            check(r#"{"stream":true,"stream_options":{"include_\u0075sage":false}}"#),
            r#"{"stream":true,"stream_options":{"include_\u0075sage":true}}"#
        );
    }

    #[test]
    fn other_members_are_kept() {
        assert_eq!(
            check(
                r#"{"stream":true,"stream_options":{"include_obfuscation":false,"n":{"a":[1,"}"]}}}"#
            ),
            r#"{"stream":true,"stream_options":{"include_obfuscation":false,"n":{"a":[1,"}"]},"include_usage":true}}"#
        );
        assert_eq!(
            check(r#"{"stream":true,"stream_options":{ }}"#),
            r#"{"stream":true,"stream_options":{ "include_usage":true}}"#
        );
        assert_eq!(
            check(r#"{"stream":true,"stream_options":null}"#),
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#
        );
    }

    #[test]
    fn the_last_of_repeated_keys_is_the_one_edited() {
        let body = r#"{"stream":true,"stream_options":{"include_usage":true},"stream_option\u0073":{"include_usage":false}}"#;
        assert_eq!(
            splice(body).unwrap(),
            r#"{"stream":true,"stream_options":{"include_usage":true},"stream_option\u0073":{"include_usage":true}}"#
        );
    }

    #[test]
    fn a_client_that_asked_or_sent_no_object_is_left_alone() {
        for body in [
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            r#"{"stream":true,"stream_options":{"include_usage":false,"include_usage":true}}"#,
            r#"{"stream":true,"stream_options":"yes"}"#,
            r#"{"stream":true,"stream_options":[]}"#,
            r#"{"stream":true,"stream_options":{"include_usage":true"#,
            r#"["stream",true]"#,
        ] {
            assert_eq!(splice(body), None, "{body}");
        }
    }

    #[test]
    fn undo_gives_back_the_request_as_the_client_sent_it() {
        use crate::relay::upstream::http1::encode_request;
        use hyper::header::{HeaderName, HeaderValue};
        let encode = |body: &[u8]| {
            let name = HeaderName::from_static("content-type");
            let value = HeaderValue::from_static("application/json");
            let mut wire = Vec::new();
            let headers = [(&name, &value)];
            encode_request(
                &mut wire,
                &hyper::Method::POST,
                ["/v1/chat/completions"].into_iter(),
                "up:80",
                headers.into_iter(),
                body.len(),
            );
            wire.extend_from_slice(body);
            wire
        };
        for body in [
            r#"{"stream":true}"#.to_string(),
            format!(r#"{{"stream":true,"m":"{}"}}"#, "x".repeat(95)),
            r#"{"stream":true,"stream_options":{"include_usage":"a long value to take back"}}"#
                .to_string(),
            r#"{"stream":true,"stream_options":{}}"#.to_string(),
        ] {
            let summary = RequestSummary::read(body.as_bytes());
            let (spliced, edit) = include_usage(
                body.as_bytes(),
                summary.stream_options,
                summary.end.unwrap(),
            )
            .unwrap();
            let mut wire = encode(&spliced);
            assert!(edit.undo(&mut wire), "{body}");
            assert_eq!(
                String::from_utf8(wire).unwrap(),
                String::from_utf8(encode(body.as_bytes())).unwrap()
            );
            let mut foreign = b"GET / HTTP/1.1\r\n\r\n".to_vec();
            assert!(!edit.undo(&mut foreign));
            assert_eq!(foreign, b"GET / HTTP/1.1\r\n\r\n");
        }
    }
}
