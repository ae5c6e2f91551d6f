//! Weights read from a `.safetensors` file tensor by tensor, with
//! positional reads straight into each tensor's buffer.
//!
//! Memory-mapping the file (candle's default) maps every page of it into
//! the process while the weights are copied out, so the peak resident
//! memory of a load is the file plus the copies. Reading keeps the peak at
//! the weights themselves: the file's pages stay in the kernel's page
//! cache, outside the process.

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use serde_json::Value;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Where one tensor is in the file.
#[derive(Debug, Clone)]
struct Entry {
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte offset of its data.
    offset: u64,
    /// Bytes of its data.
    len: usize,
}

/// A `.safetensors` file, its header parsed, its data read on demand.
pub struct ReadSafetensors {
    file: File,
    entries: HashMap<String, Entry>,
}

/// The largest header accepted (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100 << 20;

impl ReadSafetensors {
    /// Open a file and parse its header, checking that every tensor's
    /// bytes are inside the file and fit its dtype and shape.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        let mut prefix = [0u8; 8];
        file.read_exact_at(&mut prefix, 0)?;
        let header_len = u64::from_le_bytes(prefix);
        if header_len > MAX_HEADER || 8 + header_len > size {
            candle_core::bail!("the safetensors header ({header_len} bytes) does not fit the file");
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact_at(&mut header, 8)?;
        let header: HashMap<String, Value> = serde_json::from_slice(&header)
            .map_err(|e| candle_core::Error::Msg(format!("the safetensors header: {e}")))?;
        let data_start = 8 + header_len;
        let mut entries = HashMap::with_capacity(header.len());
        for (name, info) in header {
            if name == "__metadata__" {
                continue;
            }
            let bad = |what: &str| candle_core::Error::Msg(format!("tensor {name}: {what}"));
            let dtype = match info.get("dtype").and_then(Value::as_str) {
                Some("F32") => DType::F32,
                Some("F16") => DType::F16,
                Some("BF16") => DType::BF16,
                Some("F64") => DType::F64,
                Some("I64") => DType::I64,
                Some("I32") => DType::I32,
                Some("I16") => DType::I16,
                Some("U32") => DType::U32,
                Some("U8") => DType::U8,
                Some(other) => return Err(bad(&format!("unsupported dtype {other}"))),
                None => return Err(bad("no dtype")),
            };
            let shape: Vec<usize> = info
                .get("shape")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("no shape"))?
                .iter()
                .map(|d| d.as_u64().map(|d| d as usize))
                .collect::<Option<_>>()
                .ok_or_else(|| bad("a bad shape"))?;
            let offsets: Vec<u64> = info
                .get("data_offsets")
                .and_then(Value::as_array)
                .and_then(|o| o.iter().map(Value::as_u64).collect())
                .ok_or_else(|| bad("no data offsets"))?;
            let [start, end] = offsets[..] else {
                return Err(bad("data offsets are not a pair"));
            };
            let elements = shape
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .ok_or_else(|| bad("a shape too large"))?;
            let len = end
                .checked_sub(start)
                .filter(|&len| {
                    data_start + end <= size && len as usize == elements * dtype.size_in_bytes()
                })
                .ok_or_else(|| bad("its bytes do not fit its shape or the file"))?;
            entries.insert(
                name,
                Entry {
                    dtype,
                    shape,
                    offset: data_start + start,
                    len: len as usize,
                },
            );
        }
        Ok(Self { file, entries })
    }

    /// Read one tensor as it is stored.
    fn read(&self, name: &str, device: &Device) -> Result<Tensor> {
        let entry = self.entries.get(name).ok_or_else(|| {
            candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt()
        })?;
        if entry.dtype == DType::F32 && cfg!(target_endian = "little") {
            // Straight into the tensor's own buffer.
            let mut values = vec![0f32; entry.len / 4];
            // SAFETY: the f32 buffer is exactly `len` initialised bytes, and
            // every bit pattern is a valid f32.
            let bytes = unsafe {
                std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), entry.len)
            };
            self.file.read_exact_at(bytes, entry.offset)?;
            return Tensor::from_vec(values, entry.shape.as_slice(), device);
        }
        let mut bytes = vec![0u8; entry.len];
        self.file.read_exact_at(&mut bytes, entry.offset)?;
        Tensor::from_raw_buffer(&bytes, entry.dtype, &entry.shape, device)
    }
}

impl SimpleBackend for ReadSafetensors {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let tensor = self.get_unchecked(name, dtype, device)?;
        if tensor.shape() != &shape {
            Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: shape,
                got: tensor.shape().clone(),
            }
            .bt())?
        }
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        self.read(name, device)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, header: &str, data: &[u8]) {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn tensors_read_back_in_every_stored_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let mut data = Vec::new();
        for v in [1.5f32, -2.0, 3.25] {
            data.extend_from_slice(&v.to_le_bytes());
        }
        // 0.5 and -4.0 as IEEE half floats.
        for v in [0x3800u16, 0xC400] {
            data.extend_from_slice(&v.to_le_bytes());
        }
        data.extend_from_slice(&7i64.to_le_bytes());
        let header = r#"{"__metadata__": {"format": "pt"},
            "a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
            "b": {"dtype": "F16", "shape": [1, 2], "data_offsets": [12, 16]},
            "c": {"dtype": "I64", "shape": [], "data_offsets": [16, 24]}}"#;
        write(&path, header, &data);
        let file = ReadSafetensors::open(&path).unwrap();
        let vb = candle_nn::VarBuilder::from_backend(Box::new(file), DType::F32, Device::Cpu);
        assert_eq!(
            vb.get(3, "a").unwrap().to_vec1::<f32>().unwrap(),
            [1.5, -2.0, 3.25]
        );
        assert_eq!(
            vb.get((1, 2), "b").unwrap().to_vec2::<f32>().unwrap(),
            [[0.5, -4.0]]
        );
        assert_eq!(vb.get((), "c").unwrap().to_scalar::<f32>().unwrap(), 7.0);
        assert!(vb.contains_tensor("a") && !vb.contains_tensor("z"));
        let err = vb.get(4, "a").unwrap_err().to_string();
        assert!(err.contains("shape mismatch for a"), "{err}");
        assert!(vb.get(3, "z").is_err());
    }

    #[test]
    fn headers_that_do_not_fit_the_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        for (header, data, needle) in [
            (
                r#"{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}"#,
                8,
                "do not fit",
            ),
            (
                r#"{"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}"#,
                16,
                "do not fit",
            ),
            (
                r#"{"a": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}"#,
                4,
                "dtype Q9",
            ),
            (r#"not json"#, 0, "header"),
        ] {
            write(&path, header, &vec![0u8; data]);
            let err = ReadSafetensors::open(&path).err().unwrap().to_string();
            assert!(err.contains(needle), "{header}: {err}");
        }
        std::fs::write(&path, u64::MAX.to_le_bytes()).unwrap();
        assert!(ReadSafetensors::open(&path).is_err());
    }
}
