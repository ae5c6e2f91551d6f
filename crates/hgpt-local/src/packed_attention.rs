//! Self-attention on AVX-512 CPUs, both products on the few-rows kernel
//! ([`crate::few_rows`]).
//!
//! For each text and head, the keys are packed once as the kernel's row
//! groups and the values as its weight panels. Queries then go one panel
//! ([`PANEL`] of them) at a time: packed as a weight panel, they give the
//! scores transposed, `[keys][PANEL queries]`. The softmax runs down those
//! columns with whole vectors (no horizontal sums), and leaves the
//! probabilities where the second product reads its rows from, so nothing
//! is transposed between the two products. A panel's scores (keys x 32
//! values) stay in L2 for texts of thousands of tokens.

use crate::few_rows::{PANEL, ROWS, Target, kernel_rows, lane_masks};
use crate::kernels::OutPtr;
use rayon::prelude::*;
use std::arch::x86_64::{
    __m512, _mm512_add_epi32, _mm512_add_ps, _mm512_castps_si512, _mm512_castsi512_ps,
    _mm512_div_ps, _mm512_fmadd_ps, _mm512_fnmadd_ps, _mm512_loadu_ps, _mm512_max_ps,
    _mm512_mul_ps, _mm512_set1_epi32, _mm512_set1_ps, _mm512_setzero_ps, _mm512_slli_epi32,
    _mm512_storeu_ps, _mm512_sub_epi32, _mm512_sub_ps,
};

/// Where the projections of the texts are, and their shape.
pub(crate) struct Projections<'a> {
    /// `[tokens, 3 * hidden]` row-major: queries (already scaled), keys,
    /// values.
    pub(crate) qkv: &'a [f32],
    /// The tokens of each text, one text after another.
    pub(crate) lengths: &'a [usize],
    /// Attention heads.
    pub(crate) heads: usize,
    /// Whether a token sees only itself and the tokens before it.
    pub(crate) causal: bool,
}

/// One head's keys and values of one text, packed.
struct HeadInputs {
    /// Groups of [`ROWS`] keys, each `[head_dim][group size]`.
    keys: Vec<f32>,
    /// `head_dim.div_ceil(PANEL)` panels of `[len][PANEL]` values.
    values: Vec<f32>,
}

/// `softmax(q k^T) v` per text and head, into `out` (`[tokens, hidden]`,
/// zeros on entry); `None` (and `out` untouched) if the CPU lacks AVX-512
/// or the projections do not fit `out` and the texts.
pub(crate) fn attend(input: &Projections, out: &mut [f32]) -> Option<()> {
    let tokens: usize = input.lengths.iter().sum();
    let width = input.qkv.len().checked_div(tokens)?;
    let hidden = width / 3;
    let head_dim = hidden.checked_div(input.heads)?;
    if !crate::few_rows::available()
        || head_dim == 0
        || head_dim * input.heads * 3 != width
        || tokens * width != input.qkv.len()
        || out.len() != tokens * hidden
    {
        return None;
    }
    let starts: Vec<usize> = input
        .lengths
        .iter()
        .scan(0, |start, &len| {
            *start += len;
            Some(*start - len)
        })
        .collect();
    let shape = Shape {
        width,
        hidden,
        head_dim,
    };
    let packed: Vec<HeadInputs> = (0..input.lengths.len() * input.heads)
        .into_par_iter()
        .map(|index| {
            let text = index / input.heads;
            shape.pack_head(
                input.qkv,
                starts[text],
                input.lengths[text],
                index % input.heads,
            )
        })
        .collect();
    let mut tasks = Vec::new();
    for (text, &len) in input.lengths.iter().enumerate() {
        for head in 0..input.heads {
            for first in (0..len).step_by(PANEL) {
                tasks.push((text, head, first));
            }
        }
    }
    let dst = OutPtr(out.as_mut_ptr());
    tasks.par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(queries, scores), &(text, head, first)| {
            let len = input.lengths[text];
            let panel = Panel {
                start: starts[text],
                len,
                head,
                first,
                count: PANEL.min(len - first),
            };
            // SAFETY: AVX-512 checked above; `qkv` and `out` hold the texts'
            // tokens (checked above), and this task alone writes its
            // queries' rows in its head's columns.
            unsafe {
                shape.panel(
                    input,
                    &packed[text * input.heads + head],
                    &panel,
                    queries,
                    scores,
                    &dst,
                )
            };
        },
    );
    Some(())
}

/// The widths of the projections.
struct Shape {
    /// Values per token in `qkv`.
    width: usize,
    /// Values per token in the output.
    hidden: usize,
    head_dim: usize,
}

/// The queries one task attends for.
struct Panel {
    /// The text's first token.
    start: usize,
    /// The text's tokens.
    len: usize,
    head: usize,
    /// The panel's first query, in the text.
    first: usize,
    /// Queries in the panel (up to [`PANEL`]).
    count: usize,
}

impl Shape {
    /// Packs `head`'s keys and values of the text of `len` tokens from
    /// token `start`.
    fn pack_head(&self, qkv: &[f32], start: usize, len: usize, head: usize) -> HeadInputs {
        let d = self.head_dim;
        let key_column = self.hidden + head * d;
        let mut keys = vec![0f32; len * d];
        for group in (0..len).step_by(ROWS) {
            let count = ROWS.min(len - group);
            let packed = &mut keys[group * d..(group + count) * d];
            for r in 0..count {
                let row = (start + group + r) * self.width + key_column;
                for (i, &value) in qkv[row..row + d].iter().enumerate() {
                    packed[i * count + r] = value;
                }
            }
        }
        let value_column = 2 * self.hidden + head * d;
        let panels = d.div_ceil(PANEL);
        let mut values = vec![0f32; panels * len * PANEL];
        for p in 0..panels {
            let columns = PANEL.min(d - p * PANEL);
            for j in 0..len {
                let row = (start + j) * self.width + value_column + p * PANEL;
                let to = (p * len + j) * PANEL;
                values[to..to + columns].copy_from_slice(&qkv[row..row + columns]);
            }
        }
        HeadInputs { keys, values }
    }

    /// Attention for one panel of queries, written to its rows of `dst`.
    ///
    /// # Safety
    /// The CPU must have AVX-512; `input.qkv` must be `[tokens, width]` and
    /// `dst` `[tokens, hidden]` for every token of the texts, and nothing
    /// else may access the panel's rows in the head's columns of `dst`.
    #[target_feature(enable = "avx512f")]
    unsafe fn panel(
        &self,
        input: &Projections,
        head_inputs: &HeadInputs,
        panel: &Panel,
        queries: &mut Vec<f32>,
        scores: &mut Vec<f32>,
        dst: &OutPtr,
    ) {
        let (d, len, count) = (self.head_dim, panel.len, panel.count);
        // The panel's queries as a weight panel: `[head_dim][PANEL]`.
        queries.clear();
        queries.resize(d * PANEL, 0.0);
        for c in 0..count {
            let row = (panel.start + panel.first + c) * self.width + panel.head * d;
            for (i, &q) in input.qkv[row..row + d].iter().enumerate() {
                queries[i * PANEL + c] = q;
            }
        }
        // The kernel writes the queries' lanes of every row; the other
        // lanes keep what an earlier panel left there, and nothing reads
        // them into the output.
        scores.resize(len * PANEL, 0.0);
        let (low, high) = lane_masks(count);
        for group in (0..len).step_by(ROWS) {
            let rows = ROWS.min(len - group);
            // SAFETY: the group holds `head_dim * rows` keys, the queries
            // `head_dim * PANEL` values, and `scores` the group's rows of
            // PANEL values.
            unsafe {
                kernel_rows(
                    rows,
                    head_inputs.keys.as_ptr().add(group * d),
                    rows,
                    queries.as_ptr(),
                    d,
                    Target {
                        at: scores.as_mut_ptr().add(group * PANEL),
                        stride: PANEL,
                        masks: (low, high),
                        add: false,
                    },
                );
            }
        }
        if input.causal {
            // Query `first + c` sees keys up to itself.
            for key in panel.first + 1..len {
                let hidden = (key - panel.first).min(count);
                scores[key * PANEL..key * PANEL + hidden].fill(f32::NEG_INFINITY);
            }
        }
        let inverse_sums = exponentiate_columns(scores);
        for p in 0..d.div_ceil(PANEL) {
            let (low, high) = lane_masks(d - p * PANEL);
            for group in (0..count).step_by(ROWS) {
                let rows = ROWS.min(count - group);
                let row = panel.start + panel.first + group;
                // SAFETY: `scores` holds `len` rows of PANEL probabilities,
                // of which the kernel reads columns `group..group + rows`;
                // the value panel holds `len * PANEL` values; the output
                // rows and masked columns are this task's (the caller's
                // promise).
                unsafe {
                    kernel_rows(
                        rows,
                        scores.as_ptr().add(group),
                        PANEL,
                        head_inputs.values.as_ptr().add(p * len * PANEL),
                        len,
                        Target {
                            at: dst.at(row * self.hidden + panel.head * d + p * PANEL),
                            stride: self.hidden,
                            masks: (low, high),
                            add: false,
                        },
                    );
                }
            }
        }
        // The weights were not normalised: the sums divide the outputs.
        for (c, inverse) in inverse_sums.iter().take(count).enumerate() {
            let row = (panel.start + panel.first + c) * self.hidden + panel.head * d;
            // SAFETY: the row's head columns are this task's (the caller's
            // promise) and were written just above.
            for value in unsafe { dst.row_block(row, d) } {
                *value *= inverse;
            }
        }
    }
}

/// `e^(x - max)` down each column of `[rows][PANEL]` scores, in place:
/// the softmax's numerators. Returns the inverses of the columns' sums.
#[target_feature(enable = "avx512f")]
fn exponentiate_columns(scores: &mut [f32]) -> [f32; PANEL] {
    let rows = scores.len() / PANEL;
    let at = scores.as_mut_ptr();
    let mut inverse_sums = [0f32; PANEL];
    // SAFETY: every access is to one of the `rows * PANEL` values (in
    // vectors of 16 from a row's start or middle) or to `inverse_sums`;
    // AVX-512F is enabled.
    unsafe {
        let mut max = [_mm512_set1_ps(f32::NEG_INFINITY); 2];
        for row in 0..rows {
            for (half, max) in max.iter_mut().enumerate() {
                *max = _mm512_max_ps(*max, _mm512_loadu_ps(at.add(row * PANEL + 16 * half)));
            }
        }
        let mut sum = [_mm512_setzero_ps(); 2];
        for row in 0..rows {
            for half in 0..2 {
                let lanes = at.add(row * PANEL + 16 * half);
                let e = exp_nonpositive_16(_mm512_sub_ps(_mm512_loadu_ps(lanes), max[half]));
                _mm512_storeu_ps(lanes, e);
                sum[half] = _mm512_add_ps(sum[half], e);
            }
        }
        for (half, sum) in sum.into_iter().enumerate() {
            _mm512_storeu_ps(
                inverse_sums.as_mut_ptr().add(16 * half),
                _mm512_div_ps(_mm512_set1_ps(1.0), sum),
            );
        }
    }
    inverse_sums
}

/// [`crate::kernels::exp_nonpositive`] on 16 lanes.
#[target_feature(enable = "avx512f")]
fn exp_nonpositive_16(x: __m512) -> __m512 {
    // The constants and steps of the scalar version.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const TAYLOR: [f32; 8] = [
        1.0 / 5040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];
    let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
    let shifted = _mm512_fmadd_ps(
        x,
        _mm512_set1_ps(std::f32::consts::LOG2_E),
        _mm512_set1_ps(ROUND),
    );
    let n = _mm512_sub_ps(shifted, _mm512_set1_ps(ROUND));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(TAYLOR[0]);
    for &c in &TAYLOR[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let n_int = _mm512_sub_epi32(
        _mm512_castps_si512(shifted),
        _mm512_set1_epi32(ROUND.to_bits() as i32),
    );
    let scale = _mm512_slli_epi32::<23>(_mm512_add_epi32(n_int, _mm512_set1_epi32(127)));
    _mm512_mul_ps(p, _mm512_castsi512_ps(scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small deterministic values in [-2, 2).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        crate::few_rows::test_values(len, seed)
            .into_iter()
            .map(|v| 2.0 * v)
            .collect()
    }

    /// Attention the textbook way, in f64.
    fn reference(input: &Projections, head_dim: usize) -> Vec<f32> {
        let hidden = head_dim * input.heads;
        let width = 3 * hidden;
        let tokens: usize = input.lengths.iter().sum();
        let mut out = vec![0f32; tokens * hidden];
        let mut start = 0;
        for &len in input.lengths {
            for head in 0..input.heads {
                let at = |token: usize, part: usize, i: usize| {
                    f64::from(
                        input.qkv[(start + token) * width + part * hidden + head * head_dim + i],
                    )
                };
                for q in 0..len {
                    let seen = if input.causal { q + 1 } else { len };
                    let scores: Vec<f64> = (0..seen)
                        .map(|k| (0..head_dim).map(|i| at(q, 0, i) * at(k, 1, i)).sum())
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = weights.iter().sum();
                    for i in 0..head_dim {
                        let value: f64 = weights
                            .iter()
                            .enumerate()
                            .map(|(k, w)| w * at(k, 2, i))
                            .sum();
                        out[(start + q) * hidden + head * head_dim + i] = (value / total) as f32;
                    }
                }
            }
            start += len;
        }
        out
    }

    #[test]
    fn attention_matches_the_textbook_formula() {
        if !crate::few_rows::available() {
            return;
        }
        // Texts shorter than a group, across groups and panels; heads
        // narrower than a panel and wider than one (a partial second).
        for head_dim in [8, 40] {
            for causal in [false, true] {
                let heads = 3;
                let lengths = [1, 17, 45];
                let tokens: usize = lengths.iter().sum();
                let qkv = values(tokens * 3 * heads * head_dim, head_dim as u64);
                let input = Projections {
                    qkv: &qkv,
                    lengths: &lengths,
                    heads,
                    causal,
                };
                let mut out = vec![0f32; tokens * heads * head_dim];
                assert!(attend(&input, &mut out).is_some());
                let expected = reference(&input, head_dim);
                for (i, (got, want)) in out.iter().zip(&expected).enumerate() {
                    assert!(
                        (got - want).abs() < 1e-5,
                        "head_dim {head_dim}, causal {causal}, value {i}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn projections_that_do_not_fit_are_refused() {
        let qkv = values(2 * 3 * 8, 1);
        let input = Projections {
            qkv: &qkv,
            lengths: &[3],
            heads: 2,
            causal: false,
        };
        let mut out = vec![0f32; 3 * 8];
        assert!(attend(&input, &mut out).is_none());
        assert!(out.iter().all(|&x| x == 0.0));
    }
}
