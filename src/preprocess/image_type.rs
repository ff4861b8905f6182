//! Image type detection (SPEC §3): on a 1/16 thumbnail of the per-channel max-normalised
//! image, immunofluorescence is mostly dark (> 50 % of values in the lowest tenth) with few
//! bright values (< 5 % in the highest tenth); everything else is H&E.

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ImageType {
    HE,
    Immunofluorescence,
}

impl ImageType {
    pub fn name(self) -> &'static str {
        match self {
            ImageType::HE => "HE",
            ImageType::Immunofluorescence => "Immunofluorescence",
        }
    }
}

/// Classify normalised values in [0, 1] with the reference's 1000-bin histogram rule.
pub fn classify(values: &[f32]) -> ImageType {
    if values.is_empty() {
        return ImageType::HE;
    }
    let bin = |v: f32| ((v * 1000.0) as i64).clamp(0, 999);
    let in_range = values.iter().filter(|v| (0.0..=1.0).contains(*v)).count().max(1) as f64;
    let low = values.iter().filter(|&&v| (0.0..=1.0).contains(&v) && bin(v) < 100).count() as f64 / in_range;
    let high = values.iter().filter(|&&v| (0.0..=1.0).contains(&v) && bin(v) >= 900).count() as f64 / in_range;
    if low > 0.5 && high < 0.05 {
        ImageType::Immunofluorescence
    } else {
        ImageType::HE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dark_sparse_is_if_bright_is_he() {
        let mut dark = vec![0.02f32; 900];
        dark.extend(vec![0.5f32; 100]);
        assert_eq!(classify(&dark), ImageType::Immunofluorescence);
        let bright = vec![0.92f32; 1000];
        assert_eq!(classify(&bright), ImageType::HE);
        // dark but with many saturated pixels: not IF
        let mut sat = vec![0.02f32; 600];
        sat.extend(vec![0.99f32; 400]);
        assert_eq!(classify(&sat), ImageType::HE);
    }
}
