//! The CLIP tokenizer of a diffusers repository's `tokenizer/` (or SDXL's
//! `tokenizer_2/`) folder:
//! `tokenizer.json` when present, else `vocab.json` and `merges.txt` built
//! into the byte-level BPE that transformers' `CLIPTokenizerFast` converts
//! them to (NFC, whitespace runs to one space, lowercase; CLIP's word split;
//! `</w>` word ends). Prompts become exactly `model_max_length` ids:
//! `<|startoftext|>`, at most `max - 2` tokens, `<|endoftext|>`, then the pad
//! token, as the pipelines call it (`padding="max_length", truncation=True`).

use crate::error::LocalError;
use crate::files::ModelFiles;
use serde_json::Value;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as Normalizers};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizers;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

const START: &str = "<|startoftext|>";
const END: &str = "<|endoftext|>";
/// CLIP's word split (`CLIPTokenizer`'s `pat` without its special tokens).
const WORDS: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// Turns prompts into the padded ids the CLIP text encoder reads.
pub struct PromptTokenizer {
    tokenizer: Tokenizer,
    start: u32,
    end: u32,
    pad: u32,
    length: usize,
}

impl PromptTokenizer {
    /// Load the tokenizer in `folder`; `length` is the text encoder's
    /// context (`max_position_embeddings`) when the config names no shorter
    /// `model_max_length`.
    pub fn load(files: &ModelFiles, folder: &str, length: usize) -> Result<Self, LocalError> {
        let config: Value = files
            .json_if_present(&format!("{folder}/tokenizer_config.json"))?
            .unwrap_or(Value::Null);
        let tokenizer = match files.get(&format!("{folder}/tokenizer.json")) {
            Some(path) => Tokenizer::from_file(&path)
                .map_err(|e| files.load_error(format!("{folder}/tokenizer.json: {e}")))?,
            None => clip_bpe(files, folder)?,
        };
        let id = |token: &str| {
            tokenizer.token_to_id(token).ok_or_else(|| {
                files.load_error(format!("{folder}: the tokenizer has no {token:?} token"))
            })
        };
        let (start, end) = (id(START)?, id(END)?);
        let pad = match token_setting(&config, "pad_token") {
            Some(token) => id(&token)?,
            None => end,
        };
        let length = config
            .get("model_max_length")
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .map_or(length, |n| n.min(length));
        if length < 2 {
            return Err(files.load_error(format!(
                "{folder}: the text encoder reads fewer than 2 tokens"
            )));
        }
        Ok(Self {
            tokenizer,
            start,
            end,
            pad,
            length,
        })
    }

    /// The ids of `prompt`, padded to the full length (a longer prompt is
    /// cut, as the pipelines do, with a warning).
    pub fn ids(&self, prompt: &str) -> Result<Vec<u32>, LocalError> {
        let encoding = self
            .tokenizer
            .encode(prompt, false)
            .map_err(|e| LocalError::Compute(format!("cannot tokenize the prompt: {e}")))?;
        let mut content = encoding.get_ids().to_vec();
        let room = self.length - 2;
        if content.len() > room {
            tracing::warn!(
                "the prompt is {} tokens long; CLIP reads {room}, the rest is dropped",
                content.len()
            );
            content.truncate(room);
        }
        let mut ids = Vec::with_capacity(self.length);
        ids.push(self.start);
        ids.extend(content);
        ids.push(self.end);
        ids.resize(self.length, self.pad);
        Ok(ids)
    }

    /// How many ids each prompt becomes.
    pub fn length(&self) -> usize {
        self.length
    }
}

/// A token named in `tokenizer_config.json` (a string or an `AddedToken`
/// object).
fn token_setting(config: &Value, key: &str) -> Option<String> {
    match config.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// `CLIPTokenizerFast`'s pipeline over `vocab.json` and `merges.txt`.
fn clip_bpe(files: &ModelFiles, folder: &str) -> Result<Tokenizer, LocalError> {
    let paths = files.require(&[
        &format!("{folder}/vocab.json"),
        &format!("{folder}/merges.txt"),
    ])?;
    let failed = |e: tokenizers::Error| files.load_error(format!("{folder}: {e}"));
    let path = |i: usize| paths[i].to_string_lossy().into_owned();
    let bpe = BPE::from_file(&path(0), &path(1))
        .end_of_word_suffix("</w>".into())
        .unk_token(END.into())
        .build()
        .map_err(failed)?;
    let mut tokenizer = Tokenizer::new(bpe);
    let whitespace = Replace::new(
        tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
        " ",
    )
    .map_err(failed)?;
    tokenizer.with_normalizer(Some(Normalizers::new(vec![
        NFC.into(),
        whitespace.into(),
        Lowercase.into(),
    ])));
    let words = Split::new(
        SplitPattern::Regex(WORDS.into()),
        SplitDelimiterBehavior::Removed,
        true,
    )
    .map_err(failed)?;
    tokenizer.with_pre_tokenizer(Some(PreTokenizers::new(vec![
        words.into(),
        ByteLevel::new(false, true, false).into(),
    ])));
    tokenizer.add_special_tokens(&[AddedToken::from(START, true), AddedToken::from(END, true)]);
    Ok(tokenizer)
}
