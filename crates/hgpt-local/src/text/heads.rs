//! The task heads that candle-transformers lacks, with the weight names of
//! the transformers `*For{SequenceClassification, TokenClassification,
//! QuestionAnswering}` models.

use super::encoder::Family;
use candle_core::{Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use hgpt_core::task::TaskKind;

/// A head on top of the encoder's hidden states.
pub(crate) enum Head {
    /// BERT: `bert.pooler.dense` + tanh on `[CLS]`, then `classifier`.
    Pooled { pooler: Linear, classifier: Linear },
    /// DistilBERT: `pre_classifier` + ReLU on `[CLS]`, then `classifier`.
    PreClassifier { pre: Linear, classifier: Linear },
    /// RoBERTa: `classifier.dense` + tanh + `classifier.out_proj` on `<s>`.
    Roberta { dense: Linear, out_proj: Linear },
    /// A linear `classifier` on every token.
    Tokens(Linear),
    /// `qa_outputs`: start and end logits per token.
    Spans(Linear),
}

impl Head {
    /// Load the head of `task` for `family` from the model's root `vb`.
    /// `labels` is the number of labels (ignored for question answering).
    pub fn load(
        task: TaskKind,
        family: Family,
        hidden: usize,
        labels: usize,
        vb: &VarBuilder,
    ) -> candle_core::Result<Self> {
        let linear = |i, o, name: &str| candle_nn::linear(i, o, vb.pp(name));
        Ok(match (task, family) {
            (TaskKind::TextClassification, Family::Bert) => Self::Pooled {
                pooler: linear(hidden, hidden, "bert.pooler.dense")?,
                classifier: linear(hidden, labels, "classifier")?,
            },
            (TaskKind::TextClassification, Family::DistilBert) => Self::PreClassifier {
                pre: linear(hidden, hidden, "pre_classifier")?,
                classifier: linear(hidden, labels, "classifier")?,
            },
            (TaskKind::TextClassification, Family::Roberta) => Self::Roberta {
                dense: linear(hidden, hidden, "classifier.dense")?,
                out_proj: linear(hidden, labels, "classifier.out_proj")?,
            },
            (TaskKind::QuestionAnswering, _) => Self::Spans(linear(hidden, 2, "qa_outputs")?),
            _ => Self::Tokens(linear(hidden, labels, "classifier")?),
        })
    }

    /// Logits from hidden states `[batch, seq, hidden]`: `[batch, labels]`
    /// for sequence heads, `[batch, seq, labels]` for token heads and
    /// `[batch, seq, 2]` for span heads.
    pub fn forward(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let first = || hidden.narrow(1, 0, 1)?.squeeze(1);
        match self {
            Self::Pooled { pooler, classifier } => {
                classifier.forward(&pooler.forward(&first()?)?.tanh()?)
            }
            Self::PreClassifier { pre, classifier } => {
                classifier.forward(&pre.forward(&first()?)?.relu()?)
            }
            Self::Roberta { dense, out_proj } => {
                out_proj.forward(&dense.forward(&first()?)?.tanh()?)
            }
            Self::Tokens(classifier) => classifier.forward(hidden),
            Self::Spans(qa) => qa.forward(hidden),
        }
    }
}
