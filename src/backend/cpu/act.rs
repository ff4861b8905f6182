//! Element-wise activations with their backward passes (in place where the forward allows).

use rayon::prelude::*;

pub const LEAKY_SLOPE: f32 = 0.2;
/// `torch.logit(…, eps)` as the reference calls it on the VD score.
pub const LOGIT_EPS: f32 = 1.388794e-11;

pub fn leaky_relu(x: &mut [f32]) {
    x.par_chunks_mut(1 << 14).for_each(leaky_relu_serial);
}

/// `leaky_relu` on the calling thread (for epilogues of work already split in blocks).
pub fn leaky_relu_serial(x: &mut [f32]) {
    for v in x {
        if *v < 0.0 {
            *v *= LEAKY_SLOPE
        }
    }
}

/// dx = [dx +] leaky'(x) · g (`DxEpilogue`): leaky_relu_backward's multiply and add_assign's
/// add, in that order.
pub fn finish_dx(x: &[f32], e: crate::backend::DxEpilogue, g: &[f32], dx: &mut [f32]) {
    dx.par_iter_mut().zip(g.par_iter().zip(x.par_iter())).for_each(|(d, (&g, &x))| {
        let v = if e.leaky && x <= 0.0 { g * LEAKY_SLOPE } else { g };
        *d = if e.accumulate { *d + v } else { v };
    });
}

/// dx = dy · (y > 0 ? 1 : slope), from the activation's output (same sign as its input).
pub fn leaky_relu_backward(y: &[f32], dy: &mut [f32]) {
    dy.par_iter_mut().zip(y.par_iter()).for_each(|(d, &v)| {
        if v <= 0.0 {
            *d *= LEAKY_SLOPE
        }
    });
}

pub fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

pub fn sigmoid_inplace(x: &mut [f32]) {
    x.par_iter_mut().for_each(|v| *v = sigmoid(*v));
}

/// dx = dy · y (1 − y), from the sigmoid's output.
pub fn sigmoid_backward(y: &[f32], dy: &mut [f32]) {
    dy.par_iter_mut().zip(y.par_iter()).for_each(|(d, &v)| *d *= v * (1.0 - v));
}

/// log(p / (1 − p)) with p clamped to [eps, 1 − eps] in f32, as `torch.logit` on floats.
pub fn logit(p: f32) -> f32 {
    let q = p.clamp(LOGIT_EPS, 1.0 - LOGIT_EPS);
    (q / (1.0 - q)).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_and_their_derivatives() {
        let mut x = vec![-2.0f32, 0.5, 0.0];
        leaky_relu(&mut x);
        assert_eq!(x, vec![-0.4, 0.5, 0.0]);
        let mut d = vec![1.0f32; 3];
        leaky_relu_backward(&x, &mut d);
        assert_eq!(d, vec![0.2, 1.0, 0.2]);
        let y = sigmoid(0.3);
        let mut g = vec![1.0f32];
        sigmoid_backward(&[y], &mut g);
        let fd = (sigmoid(0.3 + 1e-3) - sigmoid(0.3 - 1e-3)) / 2e-3;
        assert!((g[0] - fd).abs() < 1e-4);
        assert!((logit(sigmoid(1.7)) - 1.7).abs() < 1e-5);
        // in f32, 1 − eps rounds to 1: PyTorch's float logit of 1 is +inf too, and
        // sigmoid(+inf + anything finite) is 1
        assert!((logit(0.0) + 24.999).abs() < 1e-2);
        assert_eq!(logit(1.0), f32::INFINITY);
    }
}
