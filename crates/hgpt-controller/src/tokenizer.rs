//! The model's tokenizer: built from the GGUF metadata for `gpt2` byte-level
//! BPE vocabularies (llama 3, SmolLM2, Qwen, ...) and `llama` SentencePiece
//! ones (Phi-3, Gemma, Llama 2), or read from a `tokenizer.json`; plus the byte string of every token, which constrained
//! decoding and streaming need.

use crate::error::{ControllerError, Result};
use crate::gguf::GgufFile;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer,
};
use toktrie::{TokRxInfo, TokTrie, TokenId, TokenizerEnv};

/// GGUF token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_UNKNOWN: i64 = 2;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;
const TOKEN_TYPE_BYTE: i64 = 6;

/// llama.cpp's pre-tokenizer regexes, by `tokenizer.ggml.pre`.
const LLAMA3_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer names of `gpt2` vocabularies hgpt can rebuild.
const SUPPORTED_PRE: &[&str] = &[
    "default",
    "gpt-2",
    "gpt2",
    "llama3",
    "llama-v3",
    "llama-bpe",
    "smaug-bpe",
    "falcon3",
    "qwen2",
    "deepseek-r1-qwen",
    "smollm",
];

/// A tokenizer with what generation needs around it.
#[derive(Clone)]
pub struct Vocab {
    tokenizer: Arc<Tokenizer>,
    /// Bytes of each token; special tokens start with `0xFF` (toktrie's marker).
    token_bytes: Arc<Vec<Vec<u8>>>,
    /// The text of each token id as the vocabulary spells it.
    token_text: Arc<Vec<String>>,
    bos: Option<u32>,
    eos: Option<u32>,
}

impl std::fmt::Debug for Vocab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vocab")
            .field("size", &self.token_bytes.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

fn tok_err(e: impl std::fmt::Display) -> ControllerError {
    ControllerError::Tokenizer(e.to_string())
}

impl Vocab {
    /// The tokenizer a GGUF file describes: a `gpt2` byte-level BPE or a
    /// `llama` SentencePiece vocabulary. Others need a `tokenizer.json`.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let model = gguf
            .string("tokenizer.ggml.model")
            .ok_or_else(|| tok_err("the GGUF file has no tokenizer.ggml.model entry"))?;
        let tokens = gguf
            .strings("tokenizer.ggml.tokens")
            .ok_or_else(|| tok_err("the GGUF file has no tokenizer.ggml.tokens list"))?;
        let types = gguf
            .integers("tokenizer.ggml.token_type")
            .unwrap_or_default();
        let specials: Vec<bool> = (0..tokens.len())
            .map(|i| {
                types
                    .get(i)
                    .is_some_and(|t| *t == TOKEN_TYPE_CONTROL || *t == TOKEN_TYPE_USER_DEFINED)
            })
            .collect();
        let token_text: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
        let (mut tokenizer, token_bytes) = match model {
            "gpt2" => (
                byte_level_bpe(gguf, &tokens)?,
                byte_level_bytes(&token_text, &specials),
            ),
            "llama" => (
                sentencepiece_bpe(gguf, &tokens, &types)?,
                metaspace_bytes(&token_text, &specials),
            ),
            other => {
                return Err(tok_err(format!(
                    "the GGUF file's vocabulary is of type {other:?}; hgpt builds gpt2 \
                     (byte-level BPE) and llama (SentencePiece) vocabularies from GGUF, and \
                     any other from a tokenizer.json: put the base model's tokenizer.json \
                     next to the .gguf file or name it with [llm] tokenizer"
                )));
            }
        };
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&specials)
            .filter(|(_, special)| **special)
            .map(|(t, _)| AddedToken::from(t.to_string(), true))
            .collect();
        tokenizer.add_special_tokens(&special);
        Ok(Self::assemble(tokenizer, token_text, token_bytes, gguf))
    }

    /// A `tokenizer.json` (the base model's), with BOS and EOS from the GGUF
    /// file when it has them.
    pub fn from_tokenizer_json(path: &Path, gguf: &GgufFile) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| tok_err(format!("cannot read {}: {e}", path.display())))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| tok_err(format!("{} is not JSON: {e}", path.display())))?;
        let tokenizer = Tokenizer::from_bytes(text.as_bytes())
            .map_err(|e| tok_err(format!("{}: {e}", path.display())))?;
        let size = tokenizer.get_vocab_size(true);
        let mut token_text = vec![String::new(); size];
        for (text, id) in tokenizer.get_vocab(true) {
            if let Some(slot) = token_text.get_mut(id as usize) {
                *slot = text;
            }
        }
        let mut specials = vec![false; size];
        for (id, added) in tokenizer.get_added_tokens_decoder() {
            if added.special
                && let Some(slot) = specials.get_mut(id as usize)
            {
                *slot = true;
            }
        }
        let decoder = json["decoder"]["type"].as_str().unwrap_or_default();
        let token_bytes = if decoder == "ByteLevel" {
            byte_level_bytes(&token_text, &specials)
        } else {
            metaspace_bytes(&token_text, &specials)
        };
        Ok(Self::assemble(tokenizer, token_text, token_bytes, gguf))
    }

    fn assemble(
        tokenizer: Tokenizer,
        token_text: Vec<String>,
        token_bytes: Vec<Vec<u8>>,
        gguf: &GgufFile,
    ) -> Self {
        let id = |key: &str| {
            gguf.unsigned(key)
                .and_then(|v| u32::try_from(v).ok())
                .filter(|v| (*v as usize) < token_text.len())
        };
        Self {
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            tokenizer: Arc::new(tokenizer),
            token_bytes: Arc::new(token_bytes),
            token_text: Arc::new(token_text),
        }
    }

    /// Number of token ids.
    pub fn len(&self) -> usize {
        self.token_bytes.len()
    }

    /// Whether the vocabulary is empty.
    pub fn is_empty(&self) -> bool {
        self.token_bytes.is_empty()
    }

    /// The beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence token.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// The text of a token as the vocabulary spells it (`<|im_end|>`, `Ġthe`).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.token_text.get(id as usize).map(String::as_str)
    }

    /// The id of a token spelled exactly so.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.tokenizer.token_to_id(text)
    }

    /// Tokens of `text`; special tokens written in it (`<|im_start|>`) are
    /// recognised; no BOS is added (chat templates write it themselves).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode_fast(text, false)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    /// Whether a token is special (control or user-defined).
    pub fn is_special(&self, id: u32) -> bool {
        self.token_bytes
            .get(id as usize)
            .is_some_and(|b| b.first() == Some(&TokTrie::SPECIAL_TOKEN_MARKER))
    }

    /// The bytes a token stands for in generated text (empty for special
    /// tokens, which never reach the text).
    pub fn text_bytes(&self, id: u32) -> &[u8] {
        match self.token_bytes.get(id as usize) {
            Some(b) if b.first() != Some(&TokTrie::SPECIAL_TOKEN_MARKER) => b,
            _ => &[],
        }
    }

    /// The token environment llguidance works with.
    pub fn tok_env(&self, eos: u32) -> toktrie::TokEnv {
        let info = TokRxInfo::new(self.token_bytes.len() as u32, eos);
        let trie = TokTrie::from(&info, &self.token_bytes);
        Arc::new(GuidanceEnv {
            trie,
            vocab: self.clone(),
        })
    }
}

/// A `gpt2` vocabulary: byte-level BPE from the GGUF merges, with the
/// pre-tokenizer `tokenizer.ggml.pre` names.
fn byte_level_bpe(gguf: &GgufFile, tokens: &[&str]) -> Result<Tokenizer> {
    let merges = gguf
        .strings("tokenizer.ggml.merges")
        .ok_or_else(|| tok_err("the GGUF file has no tokenizer.ggml.merges list"))?;
    let pre = gguf.string("tokenizer.ggml.pre").unwrap_or("default");
    if !SUPPORTED_PRE.contains(&pre) {
        return Err(tok_err(format!(
            "the GGUF vocabulary uses the {pre:?} pre-tokenizer, which hgpt does not know; \
             known: {} (a tokenizer.json next to the file works for any)",
            SUPPORTED_PRE.join(", ")
        )));
    }
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    let merges: Vec<(String, String)> = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| tok_err(format!("malformed merge {m:?}")))
        })
        .collect::<Result<_>>()?;
    let llama3 = matches!(
        pre,
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "falcon3"
    );
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(llama3)
        .build()
        .map_err(tok_err)?;
    let mut tokenizer = Tokenizer::new(bpe);
    let split = |regex: &str| -> Result<PreTokenizerWrapper> {
        Ok(Split::new(
            SplitPattern::Regex(regex.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(tok_err)?
        .into())
    };
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        _ if llama3 => Sequence::new(vec![
            split(LLAMA3_SPLIT)?,
            ByteLevel::new(false, false, false).into(),
        ])
        .into(),
        "qwen2" | "deepseek-r1-qwen" => Sequence::new(vec![
            split(QWEN2_SPLIT)?,
            ByteLevel::new(false, false, false).into(),
        ])
        .into(),
        "smollm" => Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])
        .into(),
        _ => ByteLevel::new(false, true, true).into(),
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));
    Ok(tokenizer)
}

/// A `llama` (SentencePiece) vocabulary, tokenized as llama.cpp does: spaces
/// become `▁`, a `▁` is put before the text and after each special token
/// unless `tokenizer.ggml.add_space_prefix` is false, then adjacent pieces
/// merge while their union is a token, highest score first, and characters
/// no token covers fall back to `<0xAB>` byte tokens. As a BPE that is every
/// split of a token into two tokens, ranked by the whole token's score.
fn sentencepiece_bpe(gguf: &GgufFile, tokens: &[&str], types: &[i64]) -> Result<Tokenizer> {
    let scores = gguf
        .floats("tokenizer.ggml.scores")
        .ok_or_else(|| tok_err("the GGUF SentencePiece vocabulary has no tokenizer.ggml.scores"))?;
    if scores.len() != tokens.len() {
        return Err(tok_err(format!(
            "the GGUF vocabulary has {} tokens but {} scores",
            tokens.len(),
            scores.len()
        )));
    }
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    // Control, unknown, user-defined and byte tokens are never merged into.
    let mergeable = |id: usize| {
        !types.get(id).is_some_and(|t| {
            matches!(
                *t,
                TOKEN_TYPE_UNKNOWN | TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED | TOKEN_TYPE_BYTE
            )
        })
    };
    let mut ranked: Vec<(usize, &str, &str)> = Vec::new();
    for (id, token) in tokens.iter().enumerate().filter(|(id, _)| mergeable(*id)) {
        for (at, _) in token.char_indices().skip(1) {
            let (left, right) = token.split_at(at);
            if vocab.contains_key(left) && vocab.contains_key(right) {
                ranked.push((id, left, right));
            }
        }
    }
    ranked.sort_by(|a, b| scores[b.0].total_cmp(&scores[a.0]).then(a.0.cmp(&b.0)));
    let merges = ranked
        .into_iter()
        .map(|(_, left, right)| (left.to_string(), right.to_string()))
        .collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = gguf
        .unsigned("tokenizer.ggml.unknown_token_id")
        .and_then(|id| tokens.get(usize::try_from(id).ok()?))
    {
        builder = builder.unk_token(unk.to_string());
    }
    let mut tokenizer = Tokenizer::new(builder.build().map_err(tok_err)?);
    let spaces = Replace::new(" ", "\u{2581}").map_err(tok_err)?;
    let normalizer: NormalizerWrapper = if gguf.boolean("tokenizer.ggml.add_space_prefix")
        != Some(false)
    {
        NormalizerSequence::new(vec![Prepend::new("\u{2581}".into()).into(), spaces.into()]).into()
    } else {
        spaces.into()
    };
    tokenizer.with_normalizer(Some(normalizer));
    Ok(tokenizer)
}

/// [`TokenizerEnv`] over a [`Vocab`].
struct GuidanceEnv {
    trie: TokTrie,
    vocab: Vocab,
}

impl TokenizerEnv for GuidanceEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        // Grammar literals are text; invalid UTF-8 only arises mid-character,
        // where the trie's greedy tokenization is the right fallback.
        match std::str::from_utf8(s) {
            Ok(text) => self
                .vocab
                .tokenizer
                .encode_fast(text, false)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_else(|_| self.trie.greedy_tokenize(s)),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// GPT-2's printable stand-ins for bytes: char -> byte.
fn byte_level_chars() -> HashMap<char, u8> {
    let mut map = HashMap::new();
    let mut next = 256u32;
    for byte in 0u8..=255 {
        let printable = matches!(byte, 33..=126 | 161..=172 | 174..=255);
        let ch = if printable {
            char::from(byte)
        } else {
            let ch = char::from_u32(next).unwrap_or('\u{FFFD}');
            next += 1;
            ch
        };
        map.insert(ch, byte);
    }
    map
}

fn special_bytes(text: &str) -> Vec<u8> {
    let mut bytes = vec![TokTrie::SPECIAL_TOKEN_MARKER];
    bytes.extend_from_slice(text.as_bytes());
    bytes
}

/// The bytes of every token: special tokens behind the grammar's marker,
/// the others through `plain`.
fn token_bytes(
    tokens: &[String],
    specials: &[bool],
    plain: impl Fn(&str) -> Vec<u8>,
) -> Vec<Vec<u8>> {
    tokens
        .iter()
        .enumerate()
        .map(|(i, text)| {
            if specials.get(i).copied().unwrap_or(false) {
                special_bytes(text)
            } else {
                plain(text)
            }
        })
        .collect()
}

/// gpt2-style vocabularies: each character stands for one byte.
fn byte_level_bytes(tokens: &[String], specials: &[bool]) -> Vec<Vec<u8>> {
    let chars = byte_level_chars();
    token_bytes(tokens, specials, |text| {
        text.chars()
            .map(|c| chars.get(&c).copied())
            .collect::<Option<Vec<u8>>>()
            // Added plain-text tokens are written as they read.
            .unwrap_or_else(|| text.as_bytes().to_vec())
    })
}

/// SentencePiece-style vocabularies: `▁` is a space, `<0xAB>` a raw byte.
fn metaspace_bytes(tokens: &[String], specials: &[bool]) -> Vec<Vec<u8>> {
    token_bytes(tokens, specials, |text| {
        if text.len() == 6
            && text.starts_with("<0x")
            && text.ends_with('>')
            && let Ok(byte) = u8::from_str_radix(&text[3..5], 16)
        {
            return vec![byte];
        }
        text.replace('\u{2581}', " ").into_bytes()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_map_covers_every_byte_once() {
        let map = byte_level_chars();
        assert_eq!(map.len(), 256);
        assert_eq!(map[&'Ġ'], b' ');
        assert_eq!(map[&'Ċ'], b'\n');
        assert_eq!(map[&'a'], b'a');
    }

    #[test]
    fn metaspace_tokens_map_to_bytes() {
        let tokens = vec!["▁the".to_string(), "<0x0A>".to_string(), "<s>".to_string()];
        let bytes = metaspace_bytes(&tokens, &[false, false, true]);
        assert_eq!(bytes[0], b" the");
        assert_eq!(bytes[1], b"\n");
        assert_eq!(bytes[2][0], TokTrie::SPECIAL_TOKEN_MARKER);
    }
}
