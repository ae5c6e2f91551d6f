//! Reading GGUF files: metadata, tensors, and clear errors for files that are
//! truncated, corrupt, or of an architecture or quantization hgpt cannot run.

use crate::error::{ControllerError, Result};
use candle_core::Device;
use candle_core::quantized::{QTensor, gguf_file};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

/// The architectures (`general.architecture`) the embedded controller runs.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3", "phi3", "gemma3"];

/// The tensor types it reads (llama.cpp's names).
pub const SUPPORTED_QUANTIZATIONS: &[&str] = &[
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
    "Q6_K",
];

/// An open GGUF file: its metadata and tensor index, and the file to read
/// tensors from.
pub struct GgufFile {
    path: PathBuf,
    content: gguf_file::Content,
    reader: BufReader<File>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .finish()
    }
}

/// A candle error without the backtrace it may carry.
fn first_line(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// llama.cpp's name of a GGML tensor type number.
fn ggml_type_name(number: u32) -> Option<&'static str> {
    Some(match number {
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return None,
    })
}

fn unsupported_quantization(path: &Path, number: u32) -> ControllerError {
    let name = ggml_type_name(number)
        .map(str::to_string)
        .unwrap_or_else(|| format!("type {number}"));
    ControllerError::Unsupported(format!(
        "{} uses the {name} quantization, which hgpt cannot run; supported: {} \
         (pick a Q4_K_M or Q8_0 file of the same model)",
        path.display(),
        SUPPORTED_QUANTIZATIONS.join(", ")
    ))
}

impl GgufFile {
    /// Open and index a GGUF file. Nothing is loaded yet.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ControllerError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut reader = BufReader::new(file);
        let content = gguf_file::Content::read(&mut reader).map_err(|e| {
            let message = first_line(&e);
            if let Some(number) = message
                .split("unknown dtype for tensor ")
                .nth(1)
                .and_then(|n| n.trim().parse::<u32>().ok())
            {
                return unsupported_quantization(path, number);
            }
            let message = if message.contains("failed to fill whole buffer") {
                "the file ends early (truncated download?)".to_string()
            } else {
                message
            };
            ControllerError::Corrupt {
                path: path.to_path_buf(),
                message,
            }
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `general.architecture`, checked against [`SUPPORTED_ARCHITECTURES`].
    pub fn architecture(&self) -> Result<String> {
        let arch = self
            .string("general.architecture")
            .ok_or_else(|| self.corrupt("it has no general.architecture entry".to_string()))?;
        if !SUPPORTED_ARCHITECTURES.contains(&arch) {
            return Err(ControllerError::Unsupported(format!(
                "{} is a {arch} model, which the embedded controller cannot run; supported \
                 architectures: {}",
                self.path.display(),
                SUPPORTED_ARCHITECTURES.join(", ")
            )));
        }
        Ok(arch.to_string())
    }

    /// A metadata value.
    pub fn value(&self, key: &str) -> Option<&gguf_file::Value> {
        self.content.metadata.get(key)
    }

    /// A string metadata value.
    pub fn string(&self, key: &str) -> Option<&str> {
        match self.value(key)? {
            gguf_file::Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// An unsigned integer metadata value of any width.
    pub fn unsigned(&self, key: &str) -> Option<u64> {
        use gguf_file::Value as V;
        match self.value(key)? {
            V::U8(v) => Some(u64::from(*v)),
            V::U16(v) => Some(u64::from(*v)),
            V::U32(v) => Some(u64::from(*v)),
            V::U64(v) => Some(*v),
            V::I8(v) => u64::try_from(*v).ok(),
            V::I16(v) => u64::try_from(*v).ok(),
            V::I32(v) => u64::try_from(*v).ok(),
            V::I64(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }

    /// A float metadata value.
    pub fn float(&self, key: &str) -> Option<f64> {
        use gguf_file::Value as V;
        match self.value(key)? {
            V::F32(v) => Some(f64::from(*v)),
            V::F64(v) => Some(*v),
            _ => None,
        }
    }

    /// A boolean metadata value.
    pub fn boolean(&self, key: &str) -> Option<bool> {
        match self.value(key)? {
            gguf_file::Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// An array of floats.
    pub fn floats(&self, key: &str) -> Option<Vec<f32>> {
        use gguf_file::Value as V;
        match self.value(key)? {
            V::Array(items) => items
                .iter()
                .map(|v| match v {
                    V::F32(v) => Some(*v),
                    V::F64(v) => Some(*v as f32),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    /// A required unsigned value, as `usize`.
    pub fn required(&self, key: &str) -> Result<usize> {
        self.unsigned(key)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| self.corrupt(format!("it has no usable {key} entry")))
    }

    /// An array of strings.
    pub fn strings(&self, key: &str) -> Option<Vec<&str>> {
        match self.value(key)? {
            gguf_file::Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    gguf_file::Value::String(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    /// An array of integers (any width).
    pub fn integers(&self, key: &str) -> Option<Vec<i64>> {
        use gguf_file::Value as V;
        match self.value(key)? {
            V::Array(items) => items
                .iter()
                .map(|v| match v {
                    V::U8(v) => Some(i64::from(*v)),
                    V::I8(v) => Some(i64::from(*v)),
                    V::U16(v) => Some(i64::from(*v)),
                    V::I16(v) => Some(i64::from(*v)),
                    V::U32(v) => Some(i64::from(*v)),
                    V::I32(v) => Some(i64::from(*v)),
                    V::I64(v) => Some(*v),
                    V::U64(v) => i64::try_from(*v).ok(),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    /// Whether the file has a tensor of this name.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// The shape of a tensor (outermost dimension first), if present.
    pub fn tensor_shape(&self, name: &str) -> Option<Vec<usize>> {
        self.content
            .tensor_infos
            .get(name)
            .map(|info| info.shape.dims().to_vec())
    }

    /// Read a tensor; a missing or short tensor is an error naming it.
    pub fn tensor(&mut self, name: &str, device: &Device) -> Result<QTensor> {
        if !self.has_tensor(name) {
            return Err(self.corrupt(format!("the tensor {name} is missing")));
        }
        self.content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| {
                self.corrupt(format!(
                    "the tensor {name} cannot be read: {}",
                    first_line(&e)
                ))
            })
    }

    /// A tensor that may be absent.
    pub fn optional_tensor(&mut self, name: &str, device: &Device) -> Result<Option<QTensor>> {
        if self.has_tensor(name) {
            self.tensor(name, device).map(Some)
        } else {
            Ok(None)
        }
    }

    fn corrupt(&self, message: String) -> ControllerError {
        ControllerError::Corrupt {
            path: self.path.clone(),
            message,
        }
    }
}
