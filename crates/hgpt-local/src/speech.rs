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

#[cfg(test)]
mod tests {
    use super::*;
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
