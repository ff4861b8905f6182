//! Dynamic loss scaling with the semantics of PyTorch's `GradScaler` (the reference's
//! mixed-precision pre-training): the loss's gradient is multiplied by `scale` before the
//! backward pass so small half-precision gradients do not flush to zero; the gradients are
//! divided by it again before the optimiser, and a step whose gradients hold an inf or NaN is
//! skipped (the optimiser's step count too) and halves the scale; after `growth_interval`
//! clean steps in a row the scale doubles.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    pub scale: f32,
    pub growth_factor: f32,
    pub backoff_factor: f32,
    pub growth_interval: u32,
    /// clean steps since the scale last changed
    pub growth_tracker: u32,
    /// steps skipped for non-finite gradients, in all
    pub skipped: u64,
}

impl Default for LossScaler {
    /// `GradScaler()`'s defaults.
    fn default() -> Self {
        LossScaler::new(65536.0, 2000)
    }
}

impl LossScaler {
    pub fn new(init_scale: f32, growth_interval: u32) -> LossScaler {
        LossScaler {
            scale: init_scale,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval,
            growth_tracker: 0,
            skipped: 0,
        }
    }

    /// What the gradients are multiplied by to undo the scale: computed in double and rounded
    /// once, as PyTorch does (exact for the powers of two the defaults produce).
    pub fn inv_scale(&self) -> f32 {
        (1.0 / self.scale as f64) as f32
    }

    /// `GradScaler.update` after a step whose unscaled gradients were (not) all finite.
    pub fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.scale *= self.backoff_factor;
            self.growth_tracker = 0;
            self.skipped += 1;
        } else {
            self.growth_tracker += 1;
            if self.growth_tracker == self.growth_interval {
                // PyTorch only grows while the result stays finite
                let grown = self.scale * self.growth_factor;
                if grown.is_finite() {
                    self.scale = grown;
                }
                self.growth_tracker = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scale sequence of `torch.amp.GradScaler(init_scale=1024, growth_interval=3)` over
    /// this pattern of overflowing steps (printed by tools/make_scaler_fixture.py).
    #[test]
    fn scale_follows_grad_scaler() {
        let pattern = [false, false, false, true, false, true, true, false, false, false, false, false, false, true];
        let want =
            [1024.0, 1024.0, 2048.0, 1024.0, 1024.0, 512.0, 256.0, 256.0, 256.0, 512.0, 512.0, 512.0, 1024.0, 512.0];
        let mut s = LossScaler::new(1024.0, 3);
        for (k, (&inf, &w)) in pattern.iter().zip(&want).enumerate() {
            s.update(inf);
            assert_eq!(s.scale, w, "after step {k}");
        }
        assert_eq!(s.skipped, 4);
        assert_eq!(LossScaler::default().inv_scale(), 1.0 / 65536.0);
        // growth stops at the largest finite scale
        let mut top = LossScaler::new(f32::MAX, 1);
        top.update(false);
        assert_eq!(top.scale, f32::MAX);
    }
}
