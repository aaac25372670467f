//! Takes out of a stream what `include_usage` added to it: the usage-only chunk
//! (`"choices":[]` with a `usage` object) and the `"usage":null` member of every other chunk,
//! event by event as they pass, holding back only an unfinished last event.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use memchr::memmem;

use crate::relay::json_scan::{key_text, skip_ws, walk_object};
use crate::relay::record::SSE_LINE_LIMIT;

/// The filter of one stream.
#[derive(Debug, Default)]
pub struct UsageStrip {
    /// An event whose end has not arrived yet.
    partial: Vec<u8>,
    /// An event grew past `SSE_LINE_LIMIT`: from then on the stream passes untouched.
    off: bool,
}

/// What becomes of one event.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Keep,
    Drop,
    /// Remove these bytes of the event (the `"usage":null` member and its comma).
    Cut(Range<usize>),
}

impl UsageStrip {
    /// The part of `data` to forward now: its complete events, filtered; an unfinished last
    /// event is held back until its end arrives.
    pub fn feed(&mut self, data: Bytes) -> Bytes {
        if self.off {
            return data;
        }
        let out = if self.partial.is_empty() {
            let (out, done) = filter(&data);
            self.partial.extend_from_slice(&data[done..]);
            match out {
                Some(out) => out.freeze(),
                None => data.slice(..done),
            }
        } else {
            self.partial.extend_from_slice(&data);
            let (out, done) = filter(&self.partial);
            let out = out.map_or_else(
                || Bytes::copy_from_slice(&self.partial[..done]),
                BytesMut::freeze,
            );
            self.partial.drain(..done);
            out
        };
        if self.partial.len() <= SSE_LINE_LIMIT {
            return out;
        }
        // Not an event stream this filter understands: give up on it, losing nothing.
        self.off = true;
        let mut all = BytesMut::from(&out[..]);
        all.extend_from_slice(&std::mem::take(&mut self.partial));
        all.freeze()
    }

    /// At the end of the stream: what is held back, filtered as a last event.
    pub fn finish(&mut self) -> Bytes {
        let rest = std::mem::take(&mut self.partial);
        if rest.is_empty() {
            return Bytes::new();
        }
        match judge(&rest) {
            Verdict::Keep => Bytes::from(rest),
            Verdict::Drop => Bytes::new(),
            Verdict::Cut(cut) => {
                let mut out = rest;
                out.drain(cut);
                Bytes::from(out)
            }
        }
    }

    /// Bytes are held back.
    pub fn holds(&self) -> bool {
        !self.partial.is_empty()
    }
}

/// Filters the complete events at the start of `text`: the bytes to forward (`None`: exactly
/// `text[..done]`, unchanged) and `done`, where the unfinished rest starts.
fn filter(text: &[u8]) -> (Option<BytesMut>, usize) {
    let mut out: Option<BytesMut> = None;
    let mut at = 0;
    while let Some(end) = event_end(text, at) {
        let event = &text[at..end];
        let verdict = judge(event);
        if verdict != Verdict::Keep && out.is_none() {
            let mut fresh = BytesMut::with_capacity(text.len());
            fresh.extend_from_slice(&text[..at]);
            out = Some(fresh);
        }
        if let Some(out) = out.as_mut() {
            match verdict {
                Verdict::Keep => out.extend_from_slice(event),
                Verdict::Drop => {}
                Verdict::Cut(cut) => {
                    out.extend_from_slice(&event[..cut.start]);
                    out.extend_from_slice(&event[cut.end..]);
                }
            }
        }
        at = end;
    }
    (out, at)
}

/// The end of the event starting at `text[at]`: just past the empty line that ends it (lines
/// end in LF or CRLF).
fn event_end(text: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let newline = at + memchr::memchr(b'\n', &text[at..])?;
        match &text[newline + 1..] {
            [b'\n', ..] => return Some(newline + 2),
            [b'\r', b'\n', ..] => return Some(newline + 3),
            // An unfinished CR: the next bytes decide.
            [b'\r'] | [] => return None,
            _ => at = newline + 1,
        }
    }
}

/// What to do with `event` (its text, with or without the empty line that ends it). Only an
/// event with one `data:` line holding a JSON object with a top-level `usage` is touched.
fn judge(event: &[u8]) -> Verdict {
    if memmem::find(event, b"\"usage\"").is_none() {
        return Verdict::Keep;
    }
    let mut data = None;
    for line in event.split(|b| *b == b'\n') {
        if let Some(rest) = line.strip_prefix(b"data:") {
            if data.is_some() {
                return Verdict::Keep;
            }
            let value = rest.strip_prefix(b" ").unwrap_or(rest);
            let value = value.strip_suffix(b"\r").unwrap_or(value);
            // A subslice of `event`: its offset there.
            let start = value.as_ptr() as usize - event.as_ptr() as usize;
            data = Some((start, value));
        }
    }
    let Some((start, json)) = data else {
        return Verdict::Keep;
    };
    let (mut usage, mut choices) = (None, None);
    let mut previous_end = None;
    walk_object(json, |member| {
        match &*key_text(member.key) {
            b"usage" => usage = Some((previous_end, member.span.clone(), member.value.clone())),
            b"choices" => choices = Some(member.value.clone()),
            _ => {}
        }
        previous_end = Some(member.span.end);
    });
    let Some((before, span, value)) = usage else {
        return Verdict::Keep;
    };
    match &json[value.clone()] {
        b"null" => {
            // With the comma before it, or if it is the first member, the one after it.
            let cut = match before {
                Some(before) => before..span.end,
                None => match json.get(skip_ws(json, span.end)) {
                    Some(b',') => span.start..skip_ws(json, skip_ws(json, span.end) + 1),
                    _ => span,
                },
            };
            Verdict::Cut(start + cut.start..start + cut.end)
        }
        [b'{', ..] if choices.is_some_and(|choices| is_empty_array(&json[choices])) => {
            Verdict::Drop
        }
        _ => Verdict::Keep,
    }
}

fn is_empty_array(raw: &[u8]) -> bool {
    raw.first() == Some(&b'[') && skip_ws(raw, 1) == raw.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `stream` through a filter in two frames split at `split`, then its end.
    fn run(stream: &[u8], splits: &[usize]) -> String {
        let mut strip = UsageStrip::default();
        let mut out = Vec::new();
        let mut from = 0;
        for &to in splits.iter().chain([stream.len()].iter()) {
            out.extend_from_slice(&strip.feed(Bytes::copy_from_slice(&stream[from..to])));
            from = to;
        }
        out.extend_from_slice(&strip.finish());
        assert!(!strip.holds());
        String::from_utf8(out).unwrap()
    }

    const OPENAI: &str = concat!(
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\\\"usage\\\":null}\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null,\"obfuscation\":\"x\"}\n\n",
        ": keep-alive comment\n\n",
        "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":3,\"total_tokens\":7}}\n\n",
        "data: [DONE]\n\n",
    );
    const CLIENT_SEES: &str = concat!(
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\\\"usage\\\":null}\"}}]}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"obfuscation\":\"x\"}\n\n",
        ": keep-alive comment\n\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn usage_chunk_and_usage_nulls_are_removed_across_every_split_point() {
        let stream = OPENAI.as_bytes();
        assert_eq!(run(stream, &[]), CLIENT_SEES);
        for split in 0..=stream.len() {
            assert_eq!(run(stream, &[split]), CLIENT_SEES, "split at {split}");
        }
        for a in (0..stream.len()).step_by(7) {
            for b in a..=stream.len() {
                assert_eq!(run(stream, &[a, b]), CLIENT_SEES, "split at {a}, {b}");
            }
        }
        let bytewise: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(run(stream, &bytewise), CLIENT_SEES);
    }

    #[test]
    fn crlf_spacing_and_a_last_event_without_its_empty_line() {
        let stream = "data:{ \"usage\" : null , \"choices\" : [ {\"i\":0} ] }\r\n\r\ndata: {\"choices\" : [ ], \"usage\" : { \"total_tokens\" : 7 } }\r\n";
        let want = "data:{ \"choices\" : [ {\"i\":0} ] }\r\n\r\n";
        for split in 0..=stream.len() {
            assert_eq!(run(stream.as_bytes(), &[split]), want, "split at {split}");
        }
    }

    #[test]
    fn events_it_does_not_understand_pass_untouched() {
        for event in [
            // Usage together with choices (some servers put it in the last content chunk).
            "data: {\"choices\":[{\"i\":0}],\"usage\":{\"total_tokens\":7}}\n\n",
            // JSON split over two data lines.
            "data: {\"choices\":[],\n data: \"usage\":{\"total_tokens\":7}}\n\n",
            // Not JSON, or usage only inside a string or a nested object.
            "data: usage is \"usage\":null\n\n",
            "data: {\"choices\":[{\"usage\":null}]}\n\n",
            "event: usage\ndata: {\"type\":\"x\"}\n\n",
        ] {
            assert_eq!(run(event.as_bytes(), &[]), event);
        }
        assert_eq!(
            run(b"data: {\"usage\":null}\n\n", &[]),
            "data: {}\n\n",
            "the only member"
        );
    }

    #[test]
    fn unchanged_events_are_forwarded_without_a_copy() {
        let mut strip = UsageStrip::default();
        let frame = Bytes::from_static(b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n");
        let out = strip.feed(frame.clone());
        assert_eq!(out.as_ptr(), frame.as_ptr());
        assert_eq!(out.len(), frame.len());
    }

    #[test]
    fn an_endless_event_turns_the_filter_off_without_losing_bytes() {
        let mut strip = UsageStrip::default();
        let mut out = Vec::new();
        out.extend_from_slice(&strip.feed(Bytes::from_static(b"data: {\"usage\":null}\n\ndata: ")));
        let junk = Bytes::from(vec![b'x'; 16 * 1024]);
        for _ in 0..5 {
            out.extend_from_slice(&strip.feed(junk.clone()));
            assert!(strip.partial.len() <= SSE_LINE_LIMIT);
        }
        out.extend_from_slice(&strip.feed(Bytes::from_static(b"\n\ndata: {\"usage\":null}\n\n")));
        out.extend_from_slice(&strip.finish());
        let mut want = b"data: {}\n\ndata: ".to_vec();
        want.extend(std::iter::repeat_n(b'x', 5 * 16 * 1024));
        want.extend_from_slice(b"\n\ndata: {\"usage\":null}\n\n");
        assert_eq!(out, want);
    }
}
