//! The parts of a diffusers repository's `unet/config.json` and
//! `vae/config.json` that shape the networks, read and checked here (candle's
//! own configs are hard-coded presets) and turned into candle's
//! `UNet2DConditionModelConfig` plus SDXL's [`TextTime`] conditioning.

use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModelConfig,
};
use serde::Deserialize;
use serde_json::Value;

/// A value given once for all blocks or once per block.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    /// The same for every block.
    One(usize),
    /// One per block.
    Each(Vec<usize>),
}

impl PerBlock {
    fn for_blocks(&self, what: &str, blocks: usize) -> Result<Vec<usize>, String> {
        match self {
            Self::One(n) => Ok(vec![*n; blocks]),
            Self::Each(list) if list.len() == blocks => Ok(list.clone()),
            Self::Each(list) => Err(format!(
                "{what} has {} values for {blocks} blocks",
                list.len()
            )),
        }
    }
}

/// `unet/config.json` (`UNet2DConditionModel`).
#[derive(Debug, Clone, Deserialize)]
pub struct UnetConfig {
    /// Latent channels in.
    #[serde(default = "four")]
    pub in_channels: usize,
    /// Latent channels out.
    #[serde(default = "four")]
    pub out_channels: usize,
    /// Latent side the model was trained at (the default image side is this
    /// times the VAE's scale factor).
    #[serde(default)]
    pub sample_size: Option<usize>,
    block_out_channels: Vec<usize>,
    down_block_types: Vec<String>,
    up_block_types: Vec<String>,
    #[serde(default)]
    mid_block_type: Option<String>,
    #[serde(default = "two")]
    layers_per_block: usize,
    #[serde(default = "eight")]
    attention_head_dim: PerBlock,
    #[serde(default)]
    num_attention_heads: Option<PerBlock>,
    #[serde(default = "one_per_block")]
    transformer_layers_per_block: PerBlock,
    /// Width of the text embeddings the cross-attention reads.
    pub cross_attention_dim: usize,
    #[serde(default = "thirty_two")]
    norm_num_groups: usize,
    #[serde(default = "norm_eps")]
    norm_eps: f64,
    #[serde(default = "yes")]
    flip_sin_to_cos: bool,
    #[serde(default)]
    freq_shift: f64,
    #[serde(default = "one")]
    downsample_padding: usize,
    #[serde(default = "one_f")]
    mid_block_scale_factor: f64,
    #[serde(default)]
    center_input_sample: bool,
    #[serde(default)]
    use_linear_projection: bool,
    #[serde(default)]
    addition_embed_type: Option<String>,
    #[serde(default)]
    addition_time_embed_dim: Option<usize>,
    #[serde(default)]
    projection_class_embeddings_input_dim: Option<usize>,
    /// Conditioning hgpt's UNet does not have (class embeddings, LCM's
    /// guidance embedding, ...), each `null` here.
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

fn four() -> usize {
    4
}
fn two() -> usize {
    2
}
fn one() -> usize {
    1
}
fn eight() -> PerBlock {
    PerBlock::One(8)
}
fn one_per_block() -> PerBlock {
    PerBlock::One(1)
}
fn thirty_two() -> usize {
    32
}
fn norm_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}
fn one_f() -> f64 {
    1.0
}

/// Fields that must hold these values (`a|b`: either; or be absent) for
/// hgpt's UNet to be the model the config describes.
const UNET_FIXED: &[(&str, &str)] = &[
    ("act_fn", "silu|swish"),
    ("resnet_time_scale_shift", "default"),
    ("time_embedding_type", "positional"),
    ("attention_type", "default"),
    ("conv_in_kernel", "3"),
    ("conv_out_kernel", "3"),
    ("only_cross_attention", "false"),
    ("dual_cross_attention", "false"),
    ("class_embeddings_concat", "false"),
    ("resnet_skip_time_act", "false"),
    ("resnet_out_scale_factor", "1"),
];

/// The GroupNorm groups of candle's UNet blocks.
const UNET_GROUPS: usize = 32;

/// The largest channel count, layer count or embedding width a config may
/// give (SDXL's largest is 2816), so that sizes computed from them cannot
/// overflow.
const MAX_SIZE: usize = 1 << 16;

/// Fields that must be `null` (or absent): extra conditioning.
const UNET_NULL: &[&str] = &[
    "class_embed_type",
    "num_class_embeds",
    "time_cond_proj_dim",
    "encoder_hid_dim",
    "encoder_hid_dim_type",
    "time_embedding_dim",
    "timestep_post_act",
    "time_embedding_act_fn",
    "mid_block_only_cross_attention",
    "reverse_transformer_layers_per_block",
    "cross_attention_norm",
];

impl UnetConfig {
    /// candle's config, after checking that every size fits (a config that
    /// would make candle's constructors panic or build another network is an
    /// error naming the field).
    pub fn to_candle(&self) -> Result<UNet2DConditionModelConfig, String> {
        for &(field, want) in UNET_FIXED {
            if let Some(value) = self.rest.get(field).filter(|v| !v.is_null()) {
                let text = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.as_f64().map_or(n.to_string(), |f| f.to_string()),
                    other => other.to_string(),
                };
                if !want.split('|').any(|w| w == text) {
                    let want = want.replace('|', " or ");
                    return Err(format!("{field} {value} is not supported (only {want})"));
                }
            }
        }
        for &field in UNET_NULL {
            if let Some(value) = self.rest.get(field).filter(|v| !v.is_null()) {
                return Err(format!("{field} {value} is not supported"));
            }
        }
        let blocks = self.block_out_channels.len();
        if blocks == 0 {
            return Err("block_out_channels is empty".into());
        }
        if self.down_block_types.len() != blocks || self.up_block_types.len() != blocks {
            return Err(format!(
                "{blocks} block_out_channels but {} down and {} up blocks",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        if self
            .mid_block_type
            .as_deref()
            .is_some_and(|m| m != "UNetMidBlock2DCrossAttn")
        {
            return Err(format!(
                "mid_block_type {:?} is not supported",
                self.mid_block_type
            ));
        }
        let heads = self
            .num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .for_blocks("attention_head_dim", blocks)?;
        let transformer_layers = self
            .transformer_layers_per_block
            .for_blocks("transformer_layers_per_block", blocks)?;
        // candle's UNet ResNet blocks normalise over 32 groups whatever the
        // config says (every SD UNet has 32).
        let groups = self.norm_num_groups;
        if groups != UNET_GROUPS {
            return Err(format!(
                "norm_num_groups {groups} is not supported (only {UNET_GROUPS})"
            ));
        }
        let mut configs = Vec::with_capacity(blocks);
        for (i, down) in self.down_block_types.iter().enumerate() {
            let up = &self.up_block_types[blocks - 1 - i];
            let cross = match (down.as_str(), up.as_str()) {
                ("CrossAttnDownBlock2D", "CrossAttnUpBlock2D") => true,
                ("DownBlock2D", "UpBlock2D") => false,
                _ => {
                    return Err(format!(
                        "down block {down:?} with up block {up:?} is not supported"
                    ));
                }
            };
            let channels = self.block_out_channels[i];
            if channels == 0 || !channels.is_multiple_of(groups) {
                return Err(format!(
                    "block_out_channels {channels} is not a multiple of norm_num_groups {groups}"
                ));
            }
            if heads[i] == 0 || !channels.is_multiple_of(heads[i]) {
                return Err(format!(
                    "block_out_channels {channels} is not a multiple of its {} attention heads",
                    heads[i]
                ));
            }
            if cross && transformer_layers[i] == 0 {
                return Err("transformer_layers_per_block must be positive".into());
            }
            configs.push(BlockConfig {
                out_channels: channels,
                use_cross_attn: cross.then_some(transformer_layers[i]),
                attention_head_dim: heads[i],
            });
        }
        if self.layers_per_block == 0 || self.cross_attention_dim == 0 {
            return Err("layers_per_block and cross_attention_dim must be positive".into());
        }
        if self.in_channels == 0 || self.out_channels == 0 {
            return Err("in_channels and out_channels must be positive".into());
        }
        let sizes = [
            self.in_channels,
            self.out_channels,
            self.layers_per_block,
            self.cross_attention_dim,
        ];
        if sizes
            .iter()
            .chain(&self.block_out_channels)
            .chain(&transformer_layers)
            .any(|&n| n > MAX_SIZE)
        {
            return Err(format!("a channel or layer count is over {MAX_SIZE}"));
        }
        // Every SD and SDXL UNet pads its stride-2 convolutions by one pixel
        // (diffusers pads 0 asymmetrically, which hgpt's blocks do not).
        if self.downsample_padding != 1 {
            return Err(format!(
                "downsample_padding {} is not supported (only 1)",
                self.downsample_padding
            ));
        }
        // diffusers gives the mid block the last listed depth; hgpt's blocks
        // take the last block's, which is that one when the block attends.
        let last_depth = transformer_layers[blocks - 1];
        if configs[blocks - 1].use_cross_attn.is_none() && last_depth != 1 {
            return Err(format!(
                "a mid block {last_depth} transformer layers deep after a block without \
                 attention is not supported"
            ));
        }
        Ok(UNet2DConditionModelConfig {
            center_input_sample: self.center_input_sample,
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
            blocks: configs,
            layers_per_block: self.layers_per_block,
            downsample_padding: self.downsample_padding,
            mid_block_scale_factor: self.mid_block_scale_factor,
            norm_num_groups: groups,
            norm_eps: self.norm_eps,
            cross_attention_dim: self.cross_attention_dim,
            // Whole (candle 0.11's sliced attention fails on its own shapes);
            // `MAX_PIXELS` bounds the score matrices instead.
            sliced_attention_size: None,
            use_linear_projection: self.use_linear_projection,
        })
    }

    /// SDXL's added conditioning (`addition_embed_type` `text_time`), or
    /// `None` for a plain SD UNet.
    pub fn text_time(&self) -> Result<Option<TextTime>, String> {
        match self.addition_embed_type.as_deref() {
            None => Ok(None),
            Some("text_time") => {
                let (Some(time_embed_dim), Some(input_dim)) = (
                    self.addition_time_embed_dim,
                    self.projection_class_embeddings_input_dim,
                ) else {
                    return Err(
                        "addition_embed_type text_time needs addition_time_embed_dim \
                                and projection_class_embeddings_input_dim"
                            .into(),
                    );
                };
                if time_embed_dim == 0
                    || input_dim == 0
                    || time_embed_dim > MAX_SIZE
                    || input_dim > MAX_SIZE
                {
                    return Err(format!(
                        "addition_time_embed_dim and projection_class_embeddings_input_dim \
                         must be from 1 to {MAX_SIZE}"
                    ));
                }
                Ok(Some(TextTime {
                    time_embed_dim,
                    input_dim,
                }))
            }
            Some(other) => Err(format!(
                "addition_embed_type {other:?} is not supported (only text_time, SDXL's)"
            )),
        }
    }

    /// The index of the first block with attention (whose latent pixels
    /// the largest attention runs over), if any.
    pub fn first_attention_level(&self) -> Option<usize> {
        self.down_block_types
            .iter()
            .position(|t| t.starts_with("CrossAttn"))
    }
}

/// SDXL's `text_time` conditioning: each time id embedded sinusoidally
/// (`time_embed_dim` wide), the pooled text embedding beside them, the whole
/// (`input_dim` wide) embedded like a timestep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextTime {
    /// `addition_time_embed_dim`.
    pub time_embed_dim: usize,
    /// `projection_class_embeddings_input_dim`.
    pub input_dim: usize,
}

/// `vae/config.json` (`AutoencoderKL`).
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    /// Image channels in.
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Image channels out.
    #[serde(default = "three")]
    pub out_channels: usize,
    /// Channels of each resolution level, highest first.
    pub block_out_channels: Vec<usize>,
    #[serde(default)]
    down_block_types: Vec<String>,
    #[serde(default)]
    up_block_types: Vec<String>,
    /// ResNet blocks per level (the decoder has one more).
    #[serde(default = "one")]
    pub layers_per_block: usize,
    /// Latent channels.
    #[serde(default = "four")]
    pub latent_channels: usize,
    /// GroupNorm groups.
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    /// Latents are divided by it before decoding (0.18215 for SD).
    #[serde(default = "scaling_factor")]
    pub scaling_factor: f64,
    /// Whether the 1x1 `quant_conv` follows the encoder.
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    /// Whether the 1x1 `post_quant_conv` precedes the decoder.
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    mid_block_add_attention: bool,
    #[serde(default = "silu")]
    act_fn: String,
    #[serde(default)]
    latents_mean: Option<Value>,
    #[serde(default)]
    latents_std: Option<Value>,
    #[serde(default)]
    shift_factor: Option<Value>,
}

fn three() -> usize {
    3
}
fn scaling_factor() -> f64 {
    0.18215
}
fn silu() -> String {
    "silu".into()
}

impl VaeConfig {
    /// Check that the sizes fit candle's encoder and decoder blocks.
    pub fn check(&self) -> Result<(), String> {
        if self.block_out_channels.is_empty() || self.block_out_channels.len() > 8 {
            return Err("block_out_channels must have 1 to 8 levels".into());
        }
        let groups = self.norm_num_groups;
        if let Some(bad) = self
            .block_out_channels
            .iter()
            .find(|&&c| groups == 0 || c == 0 || !c.is_multiple_of(groups))
        {
            return Err(format!(
                "block_out_channels {bad} is not a multiple of norm_num_groups {groups}"
            ));
        }
        let all = |types: &[String], want: &str| types.iter().all(|t| t == want);
        if !all(&self.down_block_types, "DownEncoderBlock2D")
            || !all(&self.up_block_types, "UpDecoderBlock2D")
        {
            return Err("only DownEncoderBlock2D and UpDecoderBlock2D blocks are supported".into());
        }
        if !self.mid_block_add_attention || self.act_fn != "silu" {
            return Err(
                "only the SD autoencoder (attention in the mid block, silu) is supported".into(),
            );
        }
        if self.layers_per_block == 0
            || self.latent_channels == 0
            || self.in_channels == 0
            || self.out_channels == 0
        {
            return Err("layers_per_block and the channel counts must be positive".into());
        }
        for (field, value) in [
            ("latents_mean", &self.latents_mean),
            ("latents_std", &self.latents_std),
            ("shift_factor", &self.shift_factor),
        ] {
            if value.as_ref().is_some_and(|v| !v.is_null()) {
                return Err(format!(
                    "{field} is set; hgpt's autoencoder scales latents by scaling_factor only"
                ));
            }
        }
        if !self.scaling_factor.is_finite() || self.scaling_factor <= 0.0 {
            return Err(format!(
                "scaling_factor {} must be positive",
                self.scaling_factor
            ));
        }
        Ok(())
    }

    /// How many image pixels one latent covers along a side
    /// (`2^(levels - 1)`).
    pub fn scale_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// stable-diffusion-v1-5's `unet/config.json`.
    const SD15_UNET: &str = r#"{
      "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0", "act_fn": "silu",
      "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false,
      "cross_attention_dim": 768,
      "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
      "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
      "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
      "out_channels": 4, "sample_size": 64,
      "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}"#;

    #[test]
    fn sd_unet_configs_map_to_candle() {
        let config: UnetConfig = serde_json::from_str(SD15_UNET).unwrap();
        let candle = config.to_candle().unwrap();
        assert_eq!(candle.blocks.len(), 4);
        assert_eq!(candle.blocks[0].use_cross_attn, Some(1));
        assert_eq!(candle.blocks[3].use_cross_attn, None);
        assert_eq!(candle.blocks[2].attention_head_dim, 8);
        assert!(!candle.use_linear_projection);
        // SD 2.1: heads per block and linear projections.
        let sd21 = SD15_UNET
            .replace(r#""attention_head_dim": 8"#, r#""attention_head_dim": [5, 10, 20, 20]"#)
            .replace(r#""cross_attention_dim": 768"#, r#""cross_attention_dim": 1024, "use_linear_projection": true, "upcast_attention": true"#);
        let candle = serde_json::from_str::<UnetConfig>(&sd21)
            .unwrap()
            .to_candle()
            .unwrap();
        assert_eq!(
            candle
                .blocks
                .iter()
                .map(|b| b.attention_head_dim)
                .collect::<Vec<_>>(),
            [5, 10, 20, 20]
        );
        assert!(candle.use_linear_projection);
    }

    /// sdxl-turbo's `unet/config.json`.
    const SDXL_UNET: &str = r#"{
      "_class_name": "UNet2DConditionModel", "act_fn": "silu", "addition_embed_type": "text_time",
      "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256,
      "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
      "center_input_sample": false, "class_embed_type": null, "class_embeddings_concat": false,
      "conv_in_kernel": 3, "conv_out_kernel": 3, "cross_attention_dim": 2048,
      "cross_attention_norm": null, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
      "downsample_padding": 1, "dual_cross_attention": false, "encoder_hid_dim": null,
      "encoder_hid_dim_type": null, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
      "layers_per_block": 2, "mid_block_only_cross_attention": null, "mid_block_scale_factor": 1,
      "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05, "norm_num_groups": 32,
      "num_attention_heads": null, "num_class_embeds": null, "only_cross_attention": false,
      "out_channels": 4, "projection_class_embeddings_input_dim": 2816,
      "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": false,
      "resnet_time_scale_shift": "default", "sample_size": 64, "time_cond_proj_dim": null,
      "time_embedding_act_fn": null, "time_embedding_dim": null, "time_embedding_type": "positional",
      "timestep_post_act": null, "transformer_layers_per_block": [1, 2, 10],
      "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
      "upcast_attention": null, "use_linear_projection": true}"#;

    #[test]
    fn sdxl_unet_configs_give_blocks_and_text_time() {
        let config: UnetConfig = serde_json::from_str(SDXL_UNET).unwrap();
        let candle = config.to_candle().unwrap();
        let depths: Vec<_> = candle.blocks.iter().map(|b| b.use_cross_attn).collect();
        assert_eq!(depths, [None, Some(2), Some(10)]);
        assert_eq!(candle.blocks[2].attention_head_dim, 20);
        assert_eq!(
            config.text_time().unwrap(),
            Some(TextTime {
                time_embed_dim: 256,
                input_dim: 2816
            })
        );
        assert_eq!(config.first_attention_level(), Some(1));
        let sd: UnetConfig = serde_json::from_str(SD15_UNET).unwrap();
        assert_eq!(sd.text_time().unwrap(), None);
        assert_eq!(sd.first_attention_level(), Some(0));
        for (from, to, wanted) in [
            (
                r#""addition_time_embed_dim": 256"#,
                r#""addition_time_embed_dim": null"#,
                "needs",
            ),
            (
                r#""addition_embed_type": "text_time""#,
                r#""addition_embed_type": "image""#,
                "image",
            ),
        ] {
            let broken: UnetConfig = serde_json::from_str(&SDXL_UNET.replace(from, to)).unwrap();
            let err = broken.text_time().unwrap_err();
            assert!(err.contains(wanted), "{err}");
        }
    }

    #[test]
    fn unsupported_unets_are_named() {
        let cases = [
            (
                SD15_UNET.replace(
                    r#""act_fn": "silu""#,
                    r#""act_fn": "silu", "class_embed_type": "timestep""#,
                ),
                "class_embed_type",
            ),
            (
                SD15_UNET.replace(
                    r#""attention_head_dim": 8"#,
                    r#""attention_head_dim": [8, 8]"#,
                ),
                "2 values for 4 blocks",
            ),
            (
                SD15_UNET.replace(r#""norm_num_groups": 32"#, r#""norm_num_groups": 0"#),
                "norm_num_groups 0",
            ),
            (
                SD15_UNET.replace(r#""attention_head_dim": 8"#, r#""attention_head_dim": 7"#),
                "attention heads",
            ),
            (
                SD15_UNET.replace(
                    r#""up_block_types": ["UpBlock2D","#,
                    r#""up_block_types": ["CrossAttnUpBlock2D","#,
                ),
                "not supported",
            ),
            (
                SD15_UNET.replace(
                    r#""block_out_channels": [320, 640, 1280, 1280]"#,
                    r#""block_out_channels": []"#,
                ),
                "empty",
            ),
            (
                SD15_UNET.replace(r#""downsample_padding": 1"#, r#""downsample_padding": 0"#),
                "downsample_padding 0",
            ),
            (
                SD15_UNET.replace(
                    r#""downsample_padding": 1"#,
                    r#""downsample_padding": 1000000"#,
                ),
                "downsample_padding 1000000",
            ),
            (
                SD15_UNET.replace(
                    r#""block_out_channels": [320, 640, 1280, 1280]"#,
                    r#""block_out_channels": [320, 640, 1280, 1048576]"#,
                ),
                "over 65536",
            ),
            (
                SD15_UNET.replace(
                    r#""layers_per_block": 2"#,
                    r#""layers_per_block": 2, "transformer_layers_per_block": [1, 1, 1, 2]"#,
                ),
                "mid block 2 transformer layers",
            ),
        ];
        for (json, wanted) in cases {
            let err = serde_json::from_str::<UnetConfig>(&json)
                .unwrap()
                .to_candle()
                .unwrap_err();
            assert!(err.contains(wanted), "{err}");
        }
    }

    #[test]
    fn vae_checks() {
        let sd = r#"{"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
            "latent_channels": 4, "norm_num_groups": 32, "sample_size": 512}"#;
        let config: VaeConfig = serde_json::from_str(sd).unwrap();
        config.check().unwrap();
        assert_eq!(config.scale_factor(), 8);
        assert_eq!(config.scaling_factor, 0.18215);
        let bad: VaeConfig = serde_json::from_str(
            &sd.replace(r#""norm_num_groups": 32"#, r#""norm_num_groups": 3"#),
        )
        .unwrap();
        assert!(bad.check().unwrap_err().contains("norm_num_groups 3"));
    }
}
