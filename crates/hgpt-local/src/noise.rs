//! Seeded standard normal draws for the generative pipelines (VITS,
//! Stable Diffusion): the same seed gives the same noise on every run and
//! platform (SplitMix64 and the Box-Muller transform; not PyTorch's
//! generator, whose draws hgpt does not reproduce).

/// Standard normal numbers from a seed.
pub(crate) struct SeededNormal {
    state: u64,
    spare: Option<f32>,
}

impl SeededNormal {
    /// A generator starting at `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            state: seed,
            spare: None,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// The next draw.
    pub(crate) fn sample(&mut self) -> f32 {
        if let Some(spare) = self.spare.take() {
            return spare;
        }
        let radius = (-2.0 * self.uniform().ln()).sqrt();
        let angle = 2.0 * std::f64::consts::PI * self.uniform();
        self.spare = Some((radius * angle.sin()) as f32);
        (radius * angle.cos()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_noise_is_standard_normal_and_seeded() {
        let draws: Vec<f32> = {
            let mut g = SeededNormal::new(7);
            (0..20_000).map(|_| g.sample()).collect()
        };
        let mean = draws.iter().map(|&x| f64::from(x)).sum::<f64>() / draws.len() as f64;
        let var = draws
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / draws.len() as f64;
        assert!(mean.abs() < 0.03, "{mean}");
        assert!((var - 1.0).abs() < 0.05, "{var}");
        let mut again = SeededNormal::new(7);
        assert_eq!(again.sample(), draws[0]);
        assert_ne!(SeededNormal::new(8).sample(), draws[0]);
    }
}
