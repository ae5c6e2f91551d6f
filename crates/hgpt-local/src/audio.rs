//! Audio in and out for the local audio pipelines: WAV, FLAC, MP3 and
//! OGG/Vorbis decoded (symphonia) and mixed down to mono, resampled to a
//! model's rate the way transformers' speech pipelines do it (torchaudio's
//! windowed-sinc resampler), and 16-bit PCM WAV written for generated speech.

use std::io::Cursor;
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{CODEC_TYPE_NULL, DecoderOptions};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// The highest sample rate accepted (above any audio format in use).
pub const MAX_RATE: u32 = 384_000;

/// Mono samples in [-1, 1] at a sample rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    /// The samples, one channel.
    pub samples: Vec<f32>,
    /// Samples per second.
    pub rate: u32,
}

impl Audio {
    /// Its length in seconds.
    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / f64::from(self.rate.max(1))
    }
}

/// Why audio could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AudioError {
    /// Not a container or codec hgpt decodes.
    #[error("unsupported audio ({format}): hgpt reads WAV, FLAC, MP3 and OGG/Vorbis")]
    Unsupported {
        /// What the bytes look like.
        format: String,
    },
    /// The file is damaged or cut.
    #[error("cannot decode the {format} audio: {message}")]
    Decode {
        /// The format.
        format: String,
        /// What went wrong.
        message: String,
    },
    /// No samples at all.
    #[error("the {format} audio holds no samples")]
    Empty {
        /// The format.
        format: String,
    },
    /// Longer than the caller accepts.
    #[error("the audio is longer than {max_seconds} s")]
    TooLong {
        /// The limit.
        max_seconds: u32,
    },
    /// A sample rate that cannot be used.
    #[error("invalid sample rate {0} Hz")]
    Rate(u32),
}

/// The container a file's first bytes announce, for messages and hints.
pub fn container_of(bytes: &[u8]) -> &'static str {
    match bytes {
        [
            b'R',
            b'I',
            b'F',
            b'F',
            _,
            _,
            _,
            _,
            b'W',
            b'A',
            b'V',
            b'E',
            ..,
        ] => "WAV",
        [b'f', b'L', b'a', b'C', ..] => "FLAC",
        [b'O', b'g', b'g', b'S', ..] => "OGG",
        [b'I', b'D', b'3', ..] => "MP3",
        [0xFF, second, ..] if second & 0xE0 == 0xE0 => "MP3",
        [_, _, _, _, b'f', b't', b'y', b'p', ..] => "MP4/M4A",
        [0x1A, 0x45, 0xDF, 0xA3, ..] => "WebM/Matroska",
        [] => "empty file",
        _ => "unknown format",
    }
}

/// Decode a whole file into mono samples at its own rate: channels are
/// averaged. Audio longer than `max_seconds` is refused as soon as decoding
/// passes the limit, and rates outside 1 Hz to 384 kHz are refused. A file
/// that makes the decoding library panic (a header with impossible values)
/// is reported as undecodable.
pub fn decode(bytes: &[u8], max_seconds: u32) -> Result<Audio, AudioError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decode_unguarded(bytes, max_seconds)
    })) {
        Ok(result) => result,
        Err(_) => Err(AudioError::Decode {
            format: container_of(bytes).to_string(),
            message: "the file's headers hold impossible values".into(),
        }),
    }
}

fn decode_unguarded(bytes: &[u8], max_seconds: u32) -> Result<Audio, AudioError> {
    let container = container_of(bytes);
    let format_name = container.to_string();
    let mut hint = Hint::new();
    match container {
        "WAV" => hint.with_extension("wav"),
        "FLAC" => hint.with_extension("flac"),
        "OGG" => hint.with_extension("ogg"),
        "MP3" => hint.with_extension("mp3"),
        _ => &mut hint,
    };
    let source = MediaSourceStream::new(Box::new(Cursor::new(bytes.to_vec())), Default::default());
    let probed = symphonia::default::get_probe()
        .format(
            &hint,
            source,
            // Trim encoder delay and padding (MP3), as ffmpeg does.
            &FormatOptions {
                enable_gapless: true,
                ..FormatOptions::default()
            },
            &MetadataOptions::default(),
        )
        .map_err(|_| AudioError::Unsupported {
            format: format_name.clone(),
        })?;
    let mut reader = probed.format;
    let track = reader
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| AudioError::Unsupported {
            format: format!("{format_name} without an audio track"),
        })?;
    let track_id = track.id;
    let mut rate = track.codec_params.sample_rate.unwrap_or(0);
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| AudioError::Unsupported {
            format: format!("{format_name}: {e}"),
        })?;
    let failed = |message: String| AudioError::Decode {
        format: format_name.clone(),
        message,
    };
    let mut samples = Vec::new();
    loop {
        let packet = match reader.next_packet() {
            Ok(packet) => packet,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break;
            }
            Err(SymphoniaError::ResetRequired) => break,
            Err(e) => return Err(failed(e.to_string())),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(decoded) => decoded,
            // A damaged packet is skipped, as players do.
            Err(SymphoniaError::DecodeError(e)) => {
                tracing::debug!(format = %format_name, error = e, "skipping a damaged audio packet");
                continue;
            }
            Err(e) => return Err(failed(e.to_string())),
        };
        let spec = *decoded.spec();
        rate = spec.rate;
        if !(1..=MAX_RATE).contains(&rate) {
            return Err(AudioError::Rate(rate));
        }
        let channels = spec.channels.count().max(1);
        let mut buffer = SampleBuffer::<f32>::new(decoded.capacity() as u64, spec);
        buffer.copy_interleaved_ref(decoded);
        samples.extend(
            buffer
                .samples()
                .chunks(channels)
                .map(|frame| frame.iter().sum::<f32>() / channels as f32),
        );
        if rate > 0 && samples.len() as u64 > u64::from(max_seconds) * u64::from(rate) {
            return Err(AudioError::TooLong { max_seconds });
        }
    }
    if rate == 0 {
        return Err(failed("no sample rate".into()));
    }
    if samples.is_empty() {
        return Err(AudioError::Empty {
            format: format_name,
        });
    }
    Ok(Audio { samples, rate })
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Resample with torchaudio's `resample` (windowed sinc, Hann window, six
/// zero crossings, rolloff 0.99), as transformers' speech pipelines resample
/// raw samples given at another rate, computed in f32 as it is for f32
/// waveforms. (For files, the Python pipelines resample with ffmpeg, which
/// differs slightly.) Each output phase uses only the taps inside the
/// window's six zero crossings (torchaudio's others are zero to within
/// 1e-15), so the work does not depend on how the two rates divide.
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>, AudioError> {
    for rate in [from, to] {
        if !(1..=MAX_RATE).contains(&rate) {
            return Err(AudioError::Rate(rate));
        }
    }
    if from == to || samples.is_empty() {
        return Ok(samples.to_vec());
    }
    const ZERO_CROSSINGS: f64 = 6.0;
    const ROLLOFF: f64 = 0.99;
    let divisor = gcd(from, to);
    let (orig, new) = ((from / divisor) as usize, (to / divisor) as usize);
    let base_freq = orig.min(new) as f64 * ROLLOFF;
    let width = (ZERO_CROSSINGS * orig as f64 / base_freq).ceil() as usize;
    let taps = 2 * width + orig;
    // Per phase: the first tap inside the window and the kernel values from
    // there, as torchaudio builds them for an f32 waveform.
    let reach = ZERO_CROSSINGS * orig as f64 / base_freq;
    let phases: Vec<(usize, Vec<f32>)> = (0..new)
        .map(|phase| {
            let centre = width as f64 + orig as f64 * phase as f64 / new as f64;
            let first = (centre - reach).floor().max(0.0) as usize;
            let last = ((centre + reach).ceil() as usize).min(taps - 1);
            let values = (first..=last)
                .map(|tap| {
                    let idx = (tap as f32 - width as f32) / orig as f32;
                    let mut t = -(phase as f32) / new as f32 + idx;
                    t *= base_freq as f32;
                    t = t.clamp(-(ZERO_CROSSINGS as f32), ZERO_CROSSINGS as f32);
                    let window = (t * std::f32::consts::PI / ZERO_CROSSINGS as f32 / 2.0)
                        .cos()
                        .powi(2);
                    let t = t * std::f32::consts::PI;
                    let sinc = if t == 0.0 { 1.0 } else { t.sin() / t };
                    sinc * (window * (base_freq / orig as f64) as f32)
                })
                .collect();
            (first, values)
        })
        .collect();
    // Pad `width` zeros before and `width + orig` after, then one output
    // block of `new` samples per `orig` input samples.
    let length = samples.len();
    let mut padded = vec![0f32; width + length + width + orig];
    padded[width..width + length].copy_from_slice(samples);
    let target = (new as u64 * length as u64).div_ceil(orig as u64) as usize;
    let out = (0..target)
        .map(|n| {
            let (block, phase) = (n / new, n % new);
            let (first, values) = &phases[phase];
            let start = block * orig + first;
            values
                .iter()
                .zip(&padded[start..start + values.len()])
                .map(|(k, x)| k * x)
                .sum::<f32>()
        })
        .collect();
    Ok(out)
}

/// Decode and bring to `rate`, refusing audio longer than `max_seconds`.
pub fn load(bytes: &[u8], rate: u32, max_seconds: u32) -> Result<Audio, AudioError> {
    let audio = decode(bytes, max_seconds)?;
    let samples = resample(&audio.samples, audio.rate, rate)?;
    Ok(Audio { samples, rate })
}

/// A mono 16-bit PCM WAV file of `samples` (clipped to [-1, 1]).
pub fn encode_wav(samples: &[f32], rate: u32) -> Result<Vec<u8>, AudioError> {
    if rate == 0 {
        return Err(AudioError::Rate(rate));
    }
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = Cursor::new(Vec::with_capacity(44 + samples.len() * 2));
    let write = |out: &mut Cursor<Vec<u8>>| -> Result<(), hound::Error> {
        let mut writer = hound::WavWriter::new(out, spec)?;
        for &sample in samples {
            let value = if sample.is_finite() {
                (sample.clamp(-1.0, 1.0) * 32767.0).round() as i16
            } else {
                0
            };
            writer.write_sample(value)?;
        }
        writer.finalize()
    };
    write(&mut out).map_err(|e| AudioError::Decode {
        format: "WAV".into(),
        message: format!("cannot write: {e}"),
    })?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, seconds: f32, hz: f32) -> Vec<f32> {
        (0..(rate as f32 * seconds) as usize)
            .map(|i| 0.5 * (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin())
            .collect()
    }

    #[test]
    fn wav_round_trips_at_16_bit_precision() {
        let samples = tone(22_050, 0.1, 440.0);
        let wav = encode_wav(&samples, 22_050).unwrap();
        assert_eq!(&wav[..4], b"RIFF");
        assert_eq!(container_of(&wav), "WAV");
        let audio = decode(&wav, 60).unwrap();
        assert_eq!(audio.rate, 22_050);
        assert_eq!(audio.samples.len(), samples.len());
        for (a, b) in audio.samples.iter().zip(&samples) {
            assert!((a - b).abs() <= 1.0 / 32767.0, "{a} {b}");
        }
    }

    #[test]
    fn stereo_is_averaged() {
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 8_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut out = Cursor::new(Vec::new());
        {
            let mut writer = hound::WavWriter::new(&mut out, spec).unwrap();
            for _ in 0..100 {
                writer.write_sample(16_384i16).unwrap();
                writer.write_sample(0i16).unwrap();
            }
            writer.finalize().unwrap();
        }
        let audio = decode(out.get_ref(), 60).unwrap();
        assert_eq!(audio.samples.len(), 100);
        assert!(audio.samples.iter().all(|s| (s - 0.25).abs() < 1e-4));
    }

    #[test]
    fn bad_input_names_the_problem() {
        let err = decode(b"<html>not audio</html>", 60).unwrap_err();
        assert!(err.to_string().contains("unknown format"), "{err}");
        let err = decode(b"", 60).unwrap_err();
        assert!(err.to_string().contains("empty file"), "{err}");
        let mut webm = vec![0x1A, 0x45, 0xDF, 0xA3];
        webm.extend([0u8; 32]);
        let err = decode(&webm, 60).unwrap_err();
        assert!(err.to_string().contains("WebM"), "{err}");
        let wav = encode_wav(&tone(8_000, 2.0, 100.0), 8_000).unwrap();
        assert_eq!(
            decode(&wav, 1).unwrap_err(),
            AudioError::TooLong { max_seconds: 1 }
        );
        let cut = &wav[..30];
        assert!(decode(cut, 60).is_err());
        assert_eq!(
            resample(&[1.0], 0, 16_000).unwrap_err(),
            AudioError::Rate(0)
        );
    }

    /// A 16-bit mono WAV header claiming `rate`, with a few samples.
    fn wav_claiming(rate: u32) -> Vec<u8> {
        let data = [0u8; 64];
        let mut out = Vec::new();
        out.extend(b"RIFF");
        out.extend((36 + data.len() as u32).to_le_bytes());
        out.extend(b"WAVEfmt ");
        out.extend(16u32.to_le_bytes());
        out.extend(1u16.to_le_bytes()); // PCM
        out.extend(1u16.to_le_bytes()); // mono
        out.extend(rate.to_le_bytes());
        out.extend(rate.wrapping_mul(2).to_le_bytes());
        out.extend(2u16.to_le_bytes());
        out.extend(16u16.to_le_bytes());
        out.extend(b"data");
        out.extend((data.len() as u32).to_le_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn impossible_headers_are_errors_not_crashes() {
        assert!(decode(&wav_claiming(0), 60).is_err());
        assert_eq!(
            decode(&wav_claiming(u32::MAX), 60).unwrap_err(),
            AudioError::Rate(u32::MAX)
        );
        assert!(decode(&wav_claiming(8_000), 60).is_ok());
        assert_eq!(
            resample(&[0.0; 4], 16_000, 400_000).unwrap_err(),
            AudioError::Rate(400_000)
        );
    }

    #[test]
    fn rates_that_barely_divide_resample_quickly() {
        // 44100 and 44099 share no factor: torchaudio's kernel table would
        // hold two billion values; the windowed taps are a dozen per phase.
        let input = tone(44_100, 0.2, 440.0);
        let output = resample(&input, 44_100, 44_099).unwrap();
        assert_eq!(output.len(), (44_099 * input.len()).div_ceil(44_100));
        let reference = tone(44_099, 0.2, 440.0);
        let worst = (output.len() / 4..output.len() * 3 / 4)
            .map(|i| (output[i] - reference[i]).abs())
            .fold(0f32, f32::max);
        assert!(worst < 2e-3, "off by {worst}");
    }

    #[test]
    fn resampling_keeps_a_tone_and_the_length_torchaudio_gives() {
        for (from, to) in [
            (44_100, 16_000),
            (22_050, 16_000),
            (8_000, 16_000),
            (16_000, 16_000),
        ] {
            let input = tone(from, 0.5, 440.0);
            let output = resample(&input, from, to).unwrap();
            let expected_len = (to as usize * input.len()).div_ceil(from as usize);
            assert_eq!(output.len(), expected_len, "{from} -> {to}");
            // Away from the edges the tone is the same tone at the new rate.
            let reference = tone(to, 0.5, 440.0);
            let middle = output.len() / 4..output.len() * 3 / 4;
            let worst = middle
                .map(|i| (output[i] - reference[i]).abs())
                .fold(0f32, f32::max);
            assert!(worst < 2e-3, "{from} -> {to}: off by {worst}");
        }
    }
}
