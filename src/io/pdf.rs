//! One-page PDF figures: a raster map (Flate-compressed, drawn without smoothing), a title and a
//! key — a colour bar for score maps, swatches for label maps — as vector graphics and text in
//! the standard Helvetica font, so they stay sharp at any zoom and need no embedded font.

use std::io::Write;

/// What explains a figure's colours.
pub enum Key<'a> {
    None,
    /// A continuous bar from `low` to `high`, its colour at t ∈ [0, 1] given by `colour`.
    Bar {
        colour: &'a dyn Fn(f32) -> [u8; 3],
        low: String,
        high: String,
    },
    /// One swatch per label.
    Legend(Vec<([u8; 3], String)>),
}

/// Longest side of the drawn map in points (1/72 in): about a third of a page at full width.
const MAP_SIDE: f64 = 360.0;
const MARGIN: f64 = 24.0;
const TITLE_SIZE: f64 = 13.0;
const LABEL_SIZE: f64 = 9.0;

/// A PDF document of one page; `channels` is 3 (RGB) or 1 (gray), rows top to bottom.
pub fn figure_pdf(width: usize, height: usize, channels: usize, pixels: &[u8], title: &str, key: &Key) -> Vec<u8> {
    assert!(channels == 1 || channels == 3);
    assert_eq!(pixels.len(), width * height * channels);
    let s = MAP_SIDE / width.max(height).max(1) as f64;
    let (mw, mh) = (width as f64 * s, height as f64 * s);
    let key_w = match key {
        Key::None => 0.0,
        Key::Bar { .. } => 60.0,
        Key::Legend(items) => {
            let longest = items.iter().map(|(_, l)| l.chars().count()).max().unwrap_or(0);
            24.0 + 14.0 + longest as f64 * LABEL_SIZE * 0.56
        }
    };
    let legend_h = match key {
        Key::Legend(items) => items.len() as f64 * 14.0,
        _ => 0.0,
    };
    let page_w = (MARGIN * 2.0 + mw + key_w).max(MARGIN * 2.0 + title.chars().count() as f64 * TITLE_SIZE * 0.56);
    let body_h = mh.max(legend_h);
    let page_h = MARGIN * 2.0 + body_h + TITLE_SIZE + 10.0;
    let (x0, y0) = (MARGIN, MARGIN + body_h - mh);

    let mut c = String::new();
    c += &format!("q {mw:.3} 0 0 {mh:.3} {x0:.3} {y0:.3} cm /Map Do Q\n");
    c += &format!(
        "BT /F1 {TITLE_SIZE} Tf {:.3} {:.3} Td ({}) Tj ET\n",
        MARGIN,
        page_h - MARGIN - TITLE_SIZE,
        escape(title)
    );
    let kx = x0 + mw + 16.0;
    match key {
        Key::None => {}
        Key::Bar { low, high, .. } => {
            // a 1 × 256 image, top row = high: one raster, so no seams between strips
            let bw = 12.0;
            c += &format!("q {bw} 0 0 {mh:.3} {kx:.3} {y0:.3} cm /Bar Do Q\n");
            c += &format!("0 G 0.5 w {kx:.3} {y0:.3} {bw} {mh:.3} re S\n");
            let lx = kx + bw + 4.0;
            c += &format!("0 g BT /F1 {LABEL_SIZE} Tf {lx:.3} {y0:.3} Td ({}) Tj ET\n", escape(low));
            c += &format!(
                "BT /F1 {LABEL_SIZE} Tf {lx:.3} {:.3} Td ({}) Tj ET\n",
                y0 + mh - LABEL_SIZE * 0.7,
                escape(high)
            );
        }
        Key::Legend(items) => {
            let top = MARGIN + body_h;
            for (i, ([r, g, b], label)) in items.iter().enumerate() {
                let y = top - (i + 1) as f64 * 14.0 + 3.0;
                c += &format!(
                    "{:.4} {:.4} {:.4} rg {kx:.3} {y:.3} 10 10 re f\n",
                    *r as f64 / 255.0,
                    *g as f64 / 255.0,
                    *b as f64 / 255.0
                );
                c += &format!(
                    "0 g BT /F1 {LABEL_SIZE} Tf {:.3} {:.3} Td ({}) Tj ET\n",
                    kx + 14.0,
                    y + 1.5,
                    escape(label)
                );
            }
        }
    }

    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(pixels).expect("compressing to memory");
    let image = z.finish().expect("compressing to memory");
    let space = if channels == 3 { "/DeviceRGB" } else { "/DeviceGray" };

    let bar = if matches!(key, Key::Bar { .. }) { " /Bar 7 0 R" } else { "" };
    let mut doc = Doc::default();
    doc.bytes.extend_from_slice(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n");
    doc.object(b"<< /Type /Catalog /Pages 2 0 R >>");
    doc.object(b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>");
    doc.object(
        format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {page_w:.3} {page_h:.3}] /Resources << /XObject << /Map 4 0 R{bar} >> \
             /Font << /F1 6 0 R >> >> /Contents 5 0 R >>"
        )
        .as_bytes(),
    );
    doc.stream(
        &format!(
            "/Type /XObject /Subtype /Image /Width {width} /Height {height} /ColorSpace {space} /BitsPerComponent 8 \
             /Interpolate false /Filter /FlateDecode"
        ),
        &image,
    );
    doc.stream("", c.as_bytes());
    doc.object(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>");
    if let Key::Bar { colour, .. } = key {
        let ramp: Vec<u8> = (0..256).rev().flat_map(|i| colour(i as f32 / 255.0)).collect();
        doc.stream(
            "/Type /XObject /Subtype /Image /Width 1 /Height 256 /ColorSpace /DeviceRGB /BitsPerComponent 8",
            &ramp,
        );
    }
    doc.finish()
}

/// Text inside a PDF string literal: ASCII as is (parentheses and backslashes escaped), anything
/// else a question mark (Helvetica without an embedded font has no glyphs beyond Latin-1).
fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '(' | ')' | '\\' => {
                o.push('\\');
                o.push(ch);
            }
            ' '..='~' => o.push(ch),
            _ => o.push('?'),
        }
    }
    o
}

/// Objects numbered from 1 in the order written, with the byte offsets the cross-reference
/// table needs.
#[derive(Default)]
struct Doc {
    bytes: Vec<u8>,
    offsets: Vec<usize>,
}

impl Doc {
    fn object(&mut self, body: &[u8]) {
        self.begin();
        self.bytes.extend_from_slice(body);
        self.bytes.extend_from_slice(b"\nendobj\n");
    }

    fn stream(&mut self, dict: &str, data: &[u8]) {
        self.begin();
        self.bytes.extend_from_slice(format!("<< {dict} /Length {} >>\nstream\n", data.len()).as_bytes());
        self.bytes.extend_from_slice(data);
        self.bytes.extend_from_slice(b"\nendstream\nendobj\n");
    }

    fn begin(&mut self) {
        self.offsets.push(self.bytes.len());
        self.bytes.extend_from_slice(format!("{} 0 obj\n", self.offsets.len()).as_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        let xref = self.bytes.len();
        let n = self.offsets.len() + 1;
        self.bytes.extend_from_slice(format!("xref\n0 {n}\n0000000000 65535 f \n").as_bytes());
        for o in &self.offsets {
            self.bytes.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
        }
        self.bytes
            .extend_from_slice(format!("trailer\n<< /Size {n} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n").as_bytes());
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
        hay[from..].windows(needle.len()).position(|w| w == needle).map(|p| p + from)
    }

    /// The cross-reference table points at every object, and the image stream inflates back to
    /// the pixels.
    #[test]
    fn pdf_structure_and_image_round_trip() {
        let (w, h) = (7, 5);
        let px: Vec<u8> = (0..w * h * 3).map(|i| (i * 37 % 251) as u8).collect();
        let bar = |t: f32| [(t * 255.0) as u8, 0, 255 - (t * 255.0) as u8];
        let key = Key::Bar { colour: &bar, low: "0".into(), high: "1 (max)".into() };
        let pdf = figure_pdf(w, h, 3, &px, "SpaHDmap_1 (gene \\ é)", &key);
        assert!(pdf.starts_with(b"%PDF-1.4\n") && pdf.ends_with(b"%%EOF\n"));
        // offsets are bytes: the header's binary comment and the compressed image are not UTF-8
        let text = String::from_utf8_lossy(&pdf).into_owned();
        let sx = pdf.windows(10).rposition(|w| w == b"startxref\n").unwrap() + 10;
        let tail = std::str::from_utf8(&pdf[sx..]).unwrap();
        let xref: usize = tail.lines().next().unwrap().parse().unwrap();
        let table = std::str::from_utf8(&pdf[xref..]).unwrap();
        assert!(table.starts_with("xref\n0 8\n"));
        for (i, line) in table.lines().skip(3).take(7).enumerate() {
            let off: usize = line[..10].parse().unwrap();
            assert!(pdf[off..].starts_with(format!("{} 0 obj\n", i + 1).as_bytes()), "object {}", i + 1);
            assert_eq!(line.len(), 19, "xref entries are 20 bytes with the newline");
        }
        assert!(text.contains("(SpaHDmap_1 \\(gene \\\\ ?\\)) Tj"));
        assert!(text.contains("(1 \\(max\\)) Tj"));
        // the image: /Length bytes between `stream\n` and `\nendstream`
        let im = find(&pdf, b"/Subtype /Image", 0).unwrap();
        let len_at = find(&pdf, b"/Length ", im).unwrap() + 8;
        let digits = pdf[len_at..].iter().take_while(|b| b.is_ascii_digit()).count();
        let len: usize = std::str::from_utf8(&pdf[len_at..len_at + digits]).unwrap().parse().unwrap();
        let start = find(&pdf, b"stream\n", len_at).unwrap() + 7;
        assert_eq!(&pdf[start + len..start + len + 10], b"\nendstream");
        let mut out = Vec::new();
        flate2::read::ZlibDecoder::new(&pdf[start..start + len]).read_to_end(&mut out).unwrap();
        assert_eq!(out, px);
        // the colour bar: a 1 × 256 ramp, high at the top
        let bar_at = find(&pdf, b"/Width 1 /Height 256", 0).unwrap();
        let start = find(&pdf, b"stream\n", bar_at).unwrap() + 7;
        assert_eq!(&pdf[start..start + 3], &[255, 0, 0]);
        assert_eq!(&pdf[start + 765..start + 768], &[0, 0, 255]);
        assert!(text.contains("/XObject << /Map 4 0 R /Bar 7 0 R >>"));
        let gray = figure_pdf(2, 2, 1, &[0, 85, 170, 255], "gray", &Key::None);
        assert!(String::from_utf8_lossy(&gray).contains("/ColorSpace /DeviceGray"));
    }

    #[test]
    fn legend_lists_every_label() {
        let items = (0..5).map(|i| ([i as u8 * 40, 10, 200], format!("cluster {}", i + 1))).collect();
        let pdf = figure_pdf(3, 3, 3, &[7; 27], "clusters", &Key::Legend(items));
        let text = String::from_utf8_lossy(&pdf);
        for i in 1..=5 {
            assert!(text.contains(&format!("(cluster {i}) Tj")));
        }
        assert_eq!(text.matches(" 10 10 re f\n").count(), 5);
    }
}
