//! Request settings the speech-recognition pipelines share.

use crate::error::{LocalError, bad_input};
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::task::TaskKind;
use serde_json::Value;

/// A chunk length and its (left, right) strides, in seconds.
pub type Chunking = (f64, (f64, f64));

/// `chunk_length_s` and `stride_length_s` (a number or `[left, right]`;
/// default a sixth of the chunk on each side) as the speech-recognition
/// pipeline reads them. Audio longer than `auto_seconds` is chunked by that
/// length when the request names no length (or 0); a length over
/// `max_seconds`, or a stride as long as the chunk, is refused before it
/// becomes a sample count.
pub fn chunking(
    args: &ResolvedArgs,
    seconds: f64,
    auto_seconds: f64,
    max_seconds: u32,
) -> Result<Option<Chunking>, LocalError> {
    let task = TaskKind::AutomaticSpeechRecognition;
    let number = |value: &Value, name: &str| {
        value
            .as_f64()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| bad_input(task, format!("{name} must be a non-negative number")))
    };
    let asked = match args.other.get("chunk_length_s") {
        None | Some(Value::Null) => 0.0,
        Some(value) => number(value, "chunk_length_s")?,
    };
    let length = if asked > 0.0 {
        asked
    } else if seconds > auto_seconds {
        auto_seconds
    } else {
        return Ok(None);
    };
    let strides = match args.other.get("stride_length_s") {
        None | Some(Value::Null) => (length / 6.0, length / 6.0),
        Some(Value::Array(pair)) if pair.len() == 2 => (
            number(&pair[0], "stride_length_s")?,
            number(&pair[1], "stride_length_s")?,
        ),
        Some(value) => {
            let stride = number(value, "stride_length_s")?;
            (stride, stride)
        }
    };
    if length > f64::from(max_seconds) || strides.0 >= length || strides.1 >= length {
        return Err(bad_input(
            task,
            format!(
                "chunk_length_s must be at most {max_seconds} and longer than each stride_length_s"
            ),
        ));
    }
    Ok(Some((length, strides)))
}

/// A chunk of audio as the pipeline's `chunk_iter` cuts it: samples
/// `start..end` and the strides (in samples) its neighbours overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSpan {
    /// First sample.
    pub start: usize,
    /// One past the last sample (at most the audio's length).
    pub end: usize,
    /// Samples at the start that the previous chunk covers (0 for the first).
    pub stride_left: usize,
    /// Samples at the end that the next chunk covers (0 for the last).
    pub stride_right: usize,
}

/// The chunks of `len` samples `chunk_len` long, each `chunk_len - left -
/// right` after the previous (`chunk_len > left + right`), the last one
/// reaching the end; a chunk no longer than its left stride is left out.
pub fn chunk_spans(len: usize, chunk_len: usize, (left, right): (usize, usize)) -> Vec<ChunkSpan> {
    let step = chunk_len.saturating_sub(left + right).max(1);
    let mut spans = Vec::new();
    let mut start = 0;
    while start < len {
        let end = start + chunk_len;
        let stride_left = if start == 0 { 0 } else { left };
        let is_last = end >= len;
        let span = ChunkSpan {
            start,
            end: end.min(len),
            stride_left,
            stride_right: if is_last { 0 } else { right },
        };
        if span.end - span.start > stride_left {
            spans.push(span);
        }
        if is_last {
            break;
        }
        start += step;
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_overlap_by_their_strides_as_chunk_iter_cuts_them() {
        let spans = chunk_spans(100, 40, (8, 8));
        let starts: Vec<_> = spans.iter().map(|s| (s.start, s.end)).collect();
        assert_eq!(starts, [(0, 40), (24, 64), (48, 88), (72, 100)]);
        assert_eq!((spans[0].stride_left, spans[0].stride_right), (0, 8));
        assert_eq!((spans[3].stride_left, spans[3].stride_right), (8, 0));
        // The last chunk is cut at the end of the audio.
        let spans = chunk_spans(70, 40, (8, 8));
        assert_eq!(spans.last().map(|s| (s.start, s.end)), Some((48, 70)));
        assert_eq!(chunk_spans(10, 40, (8, 8)).len(), 1);
        assert!(chunk_spans(0, 40, (8, 8)).is_empty());
    }
    use serde_json::json;

    fn args(other: Value) -> ResolvedArgs {
        ResolvedArgs {
            other: serde_json::from_value(other).unwrap(),
            ..ResolvedArgs::default()
        }
    }

    #[test]
    fn lengths_and_strides_as_the_pipeline_reads_them() {
        let none = args(json!({}));
        assert_eq!(chunking(&none, 10.0, 30.0, 60).unwrap(), None);
        assert_eq!(
            chunking(&none, 45.0, 30.0, 60).unwrap(),
            Some((30.0, (5.0, 5.0))),
            "long audio is chunked by default"
        );
        let zero = args(json!({"chunk_length_s": 0}));
        assert_eq!(
            chunking(&zero, 45.0, 30.0, 60).unwrap(),
            Some((30.0, (5.0, 5.0)))
        );
        let pair = args(json!({"chunk_length_s": 12, "stride_length_s": [1, 2]}));
        assert_eq!(
            chunking(&pair, 5.0, 30.0, 60).unwrap(),
            Some((12.0, (1.0, 2.0)))
        );
        let one = args(json!({"chunk_length_s": 12, "stride_length_s": 3}));
        assert_eq!(
            chunking(&one, 5.0, 30.0, 60).unwrap(),
            Some((12.0, (3.0, 3.0)))
        );
        for bad in [
            json!({"chunk_length_s": -1}),
            json!({"chunk_length_s": "long"}),
            json!({"chunk_length_s": 1e300, "stride_length_s": [1e299, 1e299]}),
            json!({"chunk_length_s": 61}),
            json!({"chunk_length_s": 2, "stride_length_s": 2}),
        ] {
            assert!(
                chunking(&args(bad.clone()), 5.0, 30.0, 60).is_err(),
                "{bad}"
            );
        }
    }
}
