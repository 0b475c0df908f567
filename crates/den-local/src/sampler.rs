//! Choosing the next token: a repetition penalty (small models loop without
//! one), temperature, then nucleus sampling among the most likely tokens.

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// Tokens considered at each step.
const TOP_K: usize = 40;
/// Probability mass kept among them.
const TOP_P: f32 = 0.9;
/// How much a token already said is discouraged.
const REPEAT_PENALTY: f32 = 1.15;
/// How far back "already said" reaches.
const REPEAT_WINDOW: usize = 64;

pub(crate) struct Sampler {
    rng: StdRng,
}

impl Sampler {
    pub fn new(seed: Option<u64>) -> Self {
        Self { rng: seed.map_or_else(StdRng::from_os_rng, StdRng::seed_from_u64) }
    }

    /// The next token after `said`, from `logits` (which it changes).
    pub fn sample(&mut self, logits: &mut [f32], said: &[u32], temperature: f32) -> u32 {
        let mut recent = said[said.len().saturating_sub(REPEAT_WINDOW)..].to_vec();
        recent.sort_unstable();
        recent.dedup();
        // Once per token, however often it was said.
        for t in recent {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if *l > 0.0 { *l / REPEAT_PENALTY } else { *l * REPEAT_PENALTY };
            }
        }
        if temperature <= 0.0 || !temperature.is_finite() {
            return crate::llama::argmax(logits);
        }
        let mut best: Vec<u32> = (0..logits.len() as u32).collect();
        let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
        if best.len() > TOP_K {
            best.select_nth_unstable_by(TOP_K, by_logit);
            best.truncate(TOP_K);
        }
        best.sort_unstable_by(by_logit);
        let top = logits[best[0] as usize];
        let weights: Vec<f32> = best.iter().map(|&t| ((logits[t as usize] - top) / temperature).exp()).collect();
        let total: f32 = weights.iter().sum();
        let mut kept = 0.0;
        let mut cut = best.len();
        for (i, w) in weights.iter().enumerate() {
            kept += w / total;
            if kept >= TOP_P {
                cut = i + 1;
                break;
            }
        }
        let mass: f32 = weights[..cut].iter().sum();
        let mut pick = self.rng.random::<f32>() * mass;
        for (t, w) in best.iter().zip(&weights[..cut]) {
            pick -= w;
            if pick <= 0.0 {
                return *t;
            }
        }
        best[cut - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_temperature_takes_the_most_likely_token() {
        let mut s = Sampler::new(Some(1));
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.0], &[], 0.0), 1);
    }

    #[test]
    fn a_token_just_said_loses_a_close_race() {
        let mut s = Sampler::new(Some(1));
        assert_eq!(s.sample(&mut [2.0, 1.9], &[0], 0.0), 1);
    }

    #[test]
    fn a_token_said_many_times_is_discouraged_once() {
        let mut s = Sampler::new(Some(1));
        assert_eq!(s.sample(&mut [2.0, 1.5], &[0; 40], 0.0), 0, "2.0 / 1.15 still beats 1.5");
    }

    #[test]
    fn sampling_stays_among_the_likely_tokens() {
        let mut s = Sampler::new(Some(7));
        let mut logits = vec![-20.0f32; 100];
        logits[5] = 5.0;
        logits[9] = 4.5;
        for _ in 0..200 {
            let t = s.sample(&mut logits.clone(), &[], 0.8);
            assert!(t == 5 || t == 9, "sampled {t}");
        }
    }
}
