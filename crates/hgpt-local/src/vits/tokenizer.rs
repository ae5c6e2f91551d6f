//! transformers' `VitsTokenizer` (a slow, character-level tokenizer read
//! from `vocab.json` and `tokenizer_config.json`; the MMS repositories ship
//! no `tokenizer.json`): the text lowercased except where it spells a
//! vocabulary entry (`normalize`), Romanian's comma-below t replaced, every
//! character not in the vocabulary dropped and the ends stripped, the text
//! cut at the special tokens (which stay whole, as the slow tokenizers keep
//! added tokens), and the blank (id 0) put around every other character
//! (`add_blank`).
//!
//! Checkpoints that need an external phonemizer (`phonemize`, espeak) are
//! refused at load; texts that need the `uroman` romaniser (`is_uroman`
//! with characters outside ASCII) are refused per request.

use crate::error::LocalError;
use crate::files::ModelFiles;
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use std::collections::{BTreeMap, HashMap};

/// `vocab.json` in file order (the order `normalize` tries entries in).
struct OrderedVocab(Vec<(String, u32)>);

impl<'de> Deserialize<'de> for OrderedVocab {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = OrderedVocab;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map from tokens to ids")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedVocab, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, u32>()? {
                    entries.push(entry);
                }
                Ok(OrderedVocab(entries))
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

/// A special token as `tokenizer_config.json` writes it: a string or an
/// `AddedToken` object.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TokenSpec {
    Plain(String),
    Added { content: String },
}

impl TokenSpec {
    fn content(&self) -> &str {
        match self {
            Self::Plain(s) | Self::Added { content: s } => s,
        }
    }
}

fn default_true() -> bool {
    true
}

/// The `VitsTokenizer` options of `tokenizer_config.json`, with its
/// defaults.
#[derive(Debug, Clone, Deserialize)]
struct TokenizerConfig {
    #[serde(default = "default_true")]
    add_blank: bool,
    #[serde(default = "default_true")]
    normalize: bool,
    #[serde(default = "default_true")]
    phonemize: bool,
    #[serde(default)]
    is_uroman: bool,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    pad_token: Option<TokenSpec>,
    #[serde(default)]
    unk_token: Option<TokenSpec>,
    #[serde(default)]
    additional_special_tokens: Vec<TokenSpec>,
    #[serde(default)]
    added_tokens_decoder: BTreeMap<String, TokenSpec>,
}

/// `special_tokens_map.json` (its entries override the config's).
#[derive(Debug, Clone, Default, Deserialize)]
struct SpecialTokens {
    #[serde(default)]
    pad_token: Option<TokenSpec>,
    #[serde(default)]
    unk_token: Option<TokenSpec>,
}

/// Why a text cannot be tokenized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TextError {
    /// The model reads romanised text and this one is not.
    NeedsUroman,
    /// Nothing the model reads is left.
    Empty,
    /// A character or special token the model has no id for.
    Unknown(String),
}

/// A loaded `VitsTokenizer`.
#[derive(Debug, Clone)]
pub(crate) struct VitsTokenizer {
    /// `vocab.json` in file order.
    entries: Vec<(Vec<char>, u32)>,
    vocab: HashMap<String, u32>,
    /// Special and added tokens, longest first, with their ids when the
    /// vocabulary has them.
    added: Vec<(Vec<char>, Option<u32>)>,
    unk: Option<u32>,
    add_blank: bool,
    normalize: bool,
    is_uroman: bool,
    romanian: bool,
}

impl VitsTokenizer {
    /// Read `vocab.json`, `tokenizer_config.json` and, when present,
    /// `special_tokens_map.json` and `added_tokens.json`.
    pub(crate) fn load(files: &ModelFiles) -> Result<Self, LocalError> {
        let OrderedVocab(entries) = files.json("vocab.json")?;
        let config: TokenizerConfig = files.json("tokenizer_config.json")?;
        if config.phonemize {
            return Err(LocalError::Unsupported(format!(
                "{} reads phonemes (tokenizer_config.json has phonemize: true): VitsTokenizer \
                 turns text into phonemes with the espeak phonemizer, which hgpt does not run",
                files.id()
            )));
        }
        let special: SpecialTokens = files
            .json_if_present("special_tokens_map.json")?
            .unwrap_or_default();
        let added_json: BTreeMap<String, u32> = files
            .json_if_present("added_tokens.json")?
            .unwrap_or_default();
        let vocab: HashMap<String, u32> = entries.iter().cloned().collect();
        let content = |spec: Option<&TokenSpec>, default: &str| {
            spec.map_or(default.to_string(), |s| s.content().to_string())
        };
        let pad = content(
            special.pad_token.as_ref().or(config.pad_token.as_ref()),
            "<pad>",
        );
        let unk = content(
            special.unk_token.as_ref().or(config.unk_token.as_ref()),
            "<unk>",
        );
        let mut added: Vec<String> = vec![pad, unk.clone()];
        added.extend(
            config
                .additional_special_tokens
                .iter()
                .chain(config.added_tokens_decoder.values())
                .map(|t| t.content().to_string()),
        );
        added.extend(added_json.keys().cloned());
        added.retain(|t| !t.is_empty());
        added.sort_by(|a, b| b.chars().count().cmp(&a.chars().count()).then(a.cmp(b)));
        added.dedup();
        if config.add_blank && !vocab.values().any(|&id| id == 0) {
            return Err(files.load_error(
                "vocab.json has no id 0, the blank that add_blank puts between characters",
            ));
        }
        Ok(Self {
            entries: entries
                .into_iter()
                .filter(|(token, _)| !token.is_empty())
                .map(|(token, id)| (token.chars().collect(), id))
                .collect(),
            added: added
                .into_iter()
                .map(|t| {
                    let id = vocab
                        .get(&t)
                        .copied()
                        .or_else(|| added_json.get(&t).copied());
                    (t.chars().collect(), id)
                })
                .collect(),
            unk: vocab.get(&unk).copied(),
            vocab,
            add_blank: config.add_blank,
            normalize: config.normalize,
            is_uroman: config.is_uroman,
            romanian: config.language.as_deref() == Some("ron"),
        })
    }

    /// The token ids of `text`.
    pub(crate) fn encode(&self, text: &str) -> Result<Vec<u32>, TextError> {
        let mut chars: Vec<char> = text.chars().collect();
        if self.normalize {
            chars = self.lowercase(&chars);
        }
        if self.romanian {
            chars
                .iter_mut()
                .filter(|c| **c == 'ț')
                .for_each(|c| *c = 'ţ');
        }
        if self.is_uroman && chars.iter().any(|c| !c.is_ascii()) {
            return Err(TextError::NeedsUroman);
        }
        if self.normalize {
            chars.retain(|c| self.vocab.contains_key(c.encode_utf8(&mut [0; 4]) as &str));
            let start = chars.iter().position(|c| !is_python_space(*c));
            let end = chars.iter().rposition(|c| !is_python_space(*c));
            chars = match (start, end) {
                (Some(start), Some(end)) => chars[start..=end].to_vec(),
                _ => Vec::new(),
            };
        }
        let mut ids = Vec::new();
        let mut chunk_start = 0;
        let mut i = 0;
        while i < chars.len() {
            match self.added_at(&chars[i..]) {
                Some((length, id)) => {
                    self.push_chunk(&chars[chunk_start..i], &mut ids)?;
                    let token: String = chars[i..i + length].iter().collect();
                    ids.push(id.ok_or(TextError::Unknown(token))?);
                    i += length;
                    chunk_start = i;
                }
                None => i += 1,
            }
        }
        self.push_chunk(&chars[chunk_start..], &mut ids)?;
        if ids.is_empty() {
            return Err(TextError::Empty);
        }
        Ok(ids)
    }

    /// `VitsTokenizer.normalize_text`: at each position the first vocabulary
    /// entry (then added token) spelled there is kept as is, otherwise the
    /// character is lowercased.
    fn lowercase(&self, chars: &[char]) -> Vec<char> {
        let mut out = Vec::with_capacity(chars.len());
        let mut i = 0;
        while i < chars.len() {
            let rest = &chars[i..];
            let entry = self
                .entries
                .iter()
                .map(|(token, _)| token)
                .chain(self.added.iter().map(|(token, _)| token))
                .find(|token| rest.starts_with(token));
            match entry {
                Some(token) => {
                    out.extend_from_slice(token);
                    i += token.len();
                }
                None => {
                    out.extend(chars[i].to_lowercase());
                    i += 1;
                }
            }
        }
        out
    }

    /// The longest added token spelled at the start of `rest`.
    fn added_at(&self, rest: &[char]) -> Option<(usize, Option<u32>)> {
        self.added
            .iter()
            .find(|(token, _)| rest.starts_with(token))
            .map(|(token, id)| (token.len(), *id))
    }

    /// The ids of a stretch of text between special tokens: one per
    /// character, with the blank around each when `add_blank`.
    fn push_chunk(&self, chunk: &[char], ids: &mut Vec<u32>) -> Result<(), TextError> {
        if chunk.is_empty() {
            return Ok(());
        }
        if self.add_blank {
            ids.push(0);
        }
        for c in chunk {
            let mut buffer = [0; 4];
            let key: &str = c.encode_utf8(&mut buffer);
            let id = self
                .vocab
                .get(key)
                .copied()
                .or(self.unk)
                .ok_or_else(|| TextError::Unknown(c.to_string()))?;
            ids.push(id);
            if self.add_blank {
                ids.push(0);
            }
        }
        Ok(())
    }
}

/// Python's `str.isspace`: Unicode white space plus the four ASCII
/// separators.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}
