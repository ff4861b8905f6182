//! Otsu's threshold as scikit-image's `threshold_otsu` computes it (256 bins over the value
//! range; the threshold is a bin centre).

/// Threshold of `values` (NaN-free). A constant input returns its value.
pub fn threshold_otsu(values: &[f32]) -> f32 {
    let (lo, hi) = values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    if values.is_empty() || lo == hi {
        return lo;
    }
    const NBINS: usize = 256;
    let (lo, hi) = (lo as f64, hi as f64);
    let width = (hi - lo) / NBINS as f64;
    let mut hist = [0f64; NBINS];
    for &v in values {
        // numpy's uniform-bin rule: the last edge is inclusive
        let b = (((v as f64 - lo) / (hi - lo)) * NBINS as f64) as usize;
        hist[b.min(NBINS - 1)] += 1.0;
    }
    let centers: Vec<f64> = (0..NBINS).map(|i| lo + width * (i as f64 + 0.5)).collect();
    let mut w1 = [0f64; NBINS];
    let mut m1 = [0f64; NBINS];
    let (mut cw, mut cm) = (0f64, 0f64);
    for i in 0..NBINS {
        cw += hist[i];
        cm += hist[i] * centers[i];
        w1[i] = cw;
        m1[i] = cm / cw;
    }
    let mut w2 = [0f64; NBINS];
    let mut m2 = [0f64; NBINS];
    let (mut cw, mut cm) = (0f64, 0f64);
    for i in (0..NBINS).rev() {
        cw += hist[i];
        cm += hist[i] * centers[i];
        w2[i] = cw;
        m2[i] = cm / cw;
    }
    let mut best = (f64::NEG_INFINITY, 0usize);
    for i in 0..NBINS - 1 {
        let v = w1[i] * w2[i + 1] * (m1[i] - m2[i + 1]).powi(2);
        // NaN (empty classes) never wins; the first maximum does, as numpy's argmax
        if v > best.0 {
            best = (v, i);
        }
    }
    centers[best.1] as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates_two_modes() {
        let mut v = vec![0.1f32; 500];
        v.extend(vec![0.9f32; 300]);
        let t = threshold_otsu(&v);
        assert!(t > 0.1 && t < 0.9, "{t}");
        assert_eq!(threshold_otsu(&[0.4, 0.4]), 0.4);
    }
}
