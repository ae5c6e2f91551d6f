//! A small incremental Server-Sent Events parser.
//!
//! Feed it the response body chunk by chunk, in whatever pieces the network
//! delivers; it returns the complete events found so far. It follows the
//! WHATWG event-stream rules: lines end in `\n`, `\r\n` or `\r` (also when the
//! two bytes of `\r\n` arrive in different chunks), lines starting with `:`
//! are comments, several `data:` lines of one event are joined with `\n`, one
//! space after the colon is dropped, and a blank line ends an event. A leading
//! byte-order mark is skipped.
//!
//! One deliberate leniency: [`SseParser::finish`] dispatches a final event that
//! was not followed by a blank line, because some servers close the stream
//! right after their last `data:` line.

/// One dispatched event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if the event had one.
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
    /// The last `id:` seen on the stream so far, if any.
    pub id: Option<String>,
}

/// An incremental event-stream parser.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the line being read.
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: skip a `\n` at the start of the next.
    skip_lf: bool,
    /// At least one line has been completed (the BOM check is done).
    seen_line: bool,
    /// Data of the event being built.
    data: String,
    /// Whether the event being built has a `data` field (possibly empty).
    has_data: bool,
    /// `event` field of the event being built.
    event: Option<String>,
    /// Last event id (persists across events).
    id: Option<String>,
}

const BOM: &[u8] = "\u{feff}".as_bytes();

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consume the next piece of the body; returns the events it completed.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        if self.skip_lf && !bytes.is_empty() {
            self.skip_lf = false;
            if bytes[0] == b'\n' {
                bytes = &bytes[1..];
            }
        }
        while let Some(pos) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.line.extend_from_slice(&bytes[..pos]);
            let terminator = bytes[pos];
            bytes = &bytes[pos + 1..];
            if terminator == b'\r' {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    Some(_) => {}
                    // The `\n` of a `\r\n` may be in the next chunk.
                    None => self.skip_lf = true,
                }
            }
            self.end_line(&mut events);
        }
        self.line.extend_from_slice(bytes);
        events
    }

    /// The body ended: process an unterminated last line and dispatch a
    /// pending event.
    pub fn finish(&mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        if !self.line.is_empty() {
            self.end_line(&mut events);
        }
        self.dispatch(&mut events);
        self.skip_lf = false;
        events
    }

    fn end_line(&mut self, events: &mut Vec<SseEvent>) {
        let mut line = std::mem::take(&mut self.line);
        if !self.seen_line {
            self.seen_line = true;
            if line.starts_with(BOM) {
                line.drain(..BOM.len());
            }
        }
        if line.is_empty() {
            self.dispatch(events);
            return;
        }
        if line[0] == b':' {
            return; // comment
        }
        let text = String::from_utf8_lossy(&line);
        let (field, value) = match text.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (text.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_string()),
            "id" if !value.contains('\0') => self.id = Some(value.to_string()),
            _ => {} // `retry` and unknown fields are ignored
        }
    }

    fn dispatch(&mut self, events: &mut Vec<SseEvent>) {
        let event = self.event.take();
        if !self.has_data {
            return;
        }
        self.has_data = false;
        events.push(SseEvent {
            event,
            data: std::mem::take(&mut self.data),
            id: self.id.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(events: &[SseEvent]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

    /// Feeds `input` split at every possible byte position (and byte by byte)
    /// and checks the result never depends on where the chunks break.
    fn parse_all_splits(input: &[u8]) -> Vec<SseEvent> {
        let mut whole = SseParser::new();
        let mut expected = whole.feed(input);
        expected.extend(whole.finish());
        for cut in 0..=input.len() {
            let mut p = SseParser::new();
            let mut got = p.feed(&input[..cut]);
            got.extend(p.feed(&input[cut..]));
            got.extend(p.finish());
            assert_eq!(got, expected, "split at byte {cut}");
        }
        let mut p = SseParser::new();
        let mut got = Vec::new();
        for b in input {
            got.extend(p.feed(std::slice::from_ref(b)));
        }
        got.extend(p.finish());
        assert_eq!(got, expected, "byte by byte");
        expected
    }

    #[test]
    fn simple_events() {
        let events = parse_all_splits(b"data: hello\n\ndata: world\n\n");
        assert_eq!(data(&events), ["hello", "world"]);
    }

    #[test]
    fn line_split_across_chunks() {
        let mut p = SseParser::new();
        assert!(p.feed(b"data: {\"a\":").is_empty());
        assert!(p.feed(b" 1}\n").is_empty());
        let events = p.feed(b"\n");
        assert_eq!(data(&events), ["{\"a\": 1}"]);
    }

    #[test]
    fn crlf_and_cr_line_endings() {
        let events = parse_all_splits(b"data: one\r\n\r\ndata: two\r\rdata: three\n\n");
        assert_eq!(data(&events), ["one", "two", "three"]);
    }

    #[test]
    fn crlf_split_between_chunks_is_one_line_end() {
        let mut p = SseParser::new();
        assert!(p.feed(b"data: a\r").is_empty());
        // The `\n` completes the `\r\n`; it is not a blank line.
        assert!(p.feed(b"\n").is_empty());
        assert!(p.feed(b"data: b\r").is_empty());
        let events = p.feed(b"\n\r\n");
        assert_eq!(data(&events), ["a\nb"]);
    }

    #[test]
    fn comments_are_ignored() {
        let events = parse_all_splits(b": keep-alive\n\n:another\ndata: x\n: inside\n\n");
        assert_eq!(data(&events), ["x"]);
    }

    #[test]
    fn multi_line_data_is_joined_with_newlines() {
        let events = parse_all_splits(b"data: {\"a\":\ndata: 1}\ndata:\n\n");
        assert_eq!(data(&events), ["{\"a\":\n1}\n"]);
    }

    #[test]
    fn done_marker_is_an_ordinary_event() {
        let events = parse_all_splits(b"data: {}\n\ndata: [DONE]\n\n");
        assert_eq!(data(&events), ["{}", "[DONE]"]);
    }

    #[test]
    fn only_one_leading_space_is_dropped() {
        let events = parse_all_splits(b"data:no-space\n\ndata:  two\n\n");
        assert_eq!(data(&events), ["no-space", " two"]);
    }

    #[test]
    fn event_and_id_fields() {
        let events = parse_all_splits(b"event: error\nid: 7\ndata: boom\n\ndata: next\n\n");
        assert_eq!(events[0].event.as_deref(), Some("error"));
        assert_eq!(events[0].id.as_deref(), Some("7"));
        assert_eq!(events[1].event, None);
        assert_eq!(events[1].id.as_deref(), Some("7"));
    }

    #[test]
    fn events_without_data_are_not_dispatched() {
        let events = parse_all_splits(b"event: ping\n\nretry: 100\n\n\n\ndata: x\n\n");
        assert_eq!(data(&events), ["x"]);
        assert_eq!(events[0].event, None);
    }

    #[test]
    fn field_without_colon() {
        let events = parse_all_splits(b"data\n\n");
        assert_eq!(data(&events), [""]);
    }

    #[test]
    fn bom_is_skipped_even_when_split() {
        let mut input = BOM.to_vec();
        input.extend_from_slice(b"data: x\n\n");
        let events = parse_all_splits(&input);
        assert_eq!(data(&events), ["x"]);
    }

    #[test]
    fn unterminated_last_event_is_dispatched_on_finish() {
        let mut p = SseParser::new();
        assert!(p.feed(b"data: a\n\ndata: tail").len() == 1);
        assert_eq!(data(&p.finish()), ["tail"]);
        assert!(p.finish().is_empty());
    }

    #[test]
    fn multibyte_text_split_inside_a_character() {
        let input = "data: héllo 世界\n\n".as_bytes();
        let events = parse_all_splits(input);
        assert_eq!(data(&events), ["héllo 世界"]);
    }
}
