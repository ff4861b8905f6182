//! The reference CLI's JSON config, accepted unchanged (SPEC §1), and the per-section
//! input description that both the config and the command-line flags produce.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::io::spots::{load_h5ad, load_tables, load_visium, SpotData, TableOptions};

/// The reference's spot radius when neither the data nor the user gives one.
pub const DEFAULT_RADIUS: f64 = 65.0;

/// Where a section's spots come from.
#[derive(Debug, Clone, PartialEq)]
pub enum SectionInput {
    Visium(PathBuf),
    H5ad(PathBuf),
    Tables { coords: PathBuf, expression: PathBuf },
}

/// One section and its per-section settings (SPEC §1).
#[derive(Debug, Clone, PartialEq)]
pub struct SectionSpec {
    pub name: String,
    pub input: SectionInput,
    pub image: Option<PathBuf>,
    pub scale_rate: f64,
    /// Spot radius in original pixels; None = from the data (scale factors) or the default.
    pub radius: Option<f64>,
    pub swap_coord: bool,
    pub create_mask: bool,
    pub image_type: Option<String>,
    pub color_norm: bool,
}

impl SectionSpec {
    pub fn new(name: impl Into<String>, input: SectionInput) -> Self {
        SectionSpec {
            name: name.into(),
            input,
            image: None,
            scale_rate: 1.0,
            radius: None,
            swap_coord: true,
            create_mask: true,
            image_type: None,
            color_norm: false,
        }
    }

    /// Read the section's spots; `image` falls back to one found in a Space Ranger folder.
    pub fn load(&self, table: &TableOptions) -> Result<SpotData> {
        let mut d = match &self.input {
            SectionInput::Visium(dir) => load_visium(dir)?,
            SectionInput::H5ad(p) => load_h5ad(p)?,
            SectionInput::Tables { coords, expression } => load_tables(coords, expression, table)?,
        };
        if let Some(img) = &self.image {
            d.image = Some(img.clone());
        }
        Ok(d)
    }

    /// Spot radius in original pixels: given, else from the data's scale factors, else the
    /// reference's default of 65 (with a warning). Returns (radius, where it came from).
    pub fn radius_for(&self, d: &SpotData, warnings: &mut Vec<String>) -> (f64, &'static str) {
        match (self.radius, d.radius()) {
            (Some(r), _) => (r, "given"),
            (None, Some(r)) => (r, "scale factors (round(spot_diameter_fullres / 2))"),
            (None, None) => {
                warnings.push(format!(
                    "no spot radius in the data or settings: using the reference default of {DEFAULT_RADIUS} px"
                ));
                (DEFAULT_RADIUS, "default")
            }
        }
    }

    pub fn validate(&self) -> Result<()> {
        let f = |k: &str| format!("section {}: {k}", self.name);
        if !(self.scale_rate.is_finite() && self.scale_rate > 0.0) {
            return Err(Error::setting(f("scale_rate"), format!("must be > 0, got {}", self.scale_rate)));
        }
        if let Some(r) = self.radius {
            if !(r.is_finite() && r >= 1.0) {
                return Err(Error::setting(f("radius"), format!("must be ≥ 1 pixel, got {r}")));
            }
        }
        if let Some(t) = &self.image_type {
            if !["HE", "Immunofluorescence", "auto"].contains(&t.as_str()) {
                return Err(Error::setting(
                    f("image_type"),
                    format!("must be HE, Immunofluorescence or auto, got {t:?}"),
                ));
            }
        }
        Ok(())
    }
}

/// A parsed config file.
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    pub root_path: Option<PathBuf>,
    pub project: Option<String>,
    pub sections: Vec<SectionSpec>,
    /// (query, reference) pairs for batch-effect removal.
    pub reference: Vec<(String, String)>,
    /// Remaining `paras` entries (rank, seeds, …) for the stages that use them.
    pub paras: serde_json::Map<String, Value>,
}

fn want_str<'a>(path: &Path, field: &str, v: &'a Value) -> Result<&'a str> {
    v.as_str().ok_or_else(|| Error::format(path, field, format!("expected a string, found {v}")))
}

fn want_f64(path: &Path, field: &str, v: &Value) -> Result<f64> {
    v.as_f64().ok_or_else(|| Error::format(path, field, format!("expected a number, found {v}")))
}

fn want_bool(path: &Path, field: &str, v: &Value) -> Result<bool> {
    v.as_bool().ok_or_else(|| Error::format(path, field, format!("expected true or false, found {v}")))
}

/// A `paras` value that is a scalar for all sections or a list with one entry per section.
fn per_section<'a>(path: &Path, field: &str, v: &'a Value, n: usize) -> Result<Vec<&'a Value>> {
    match v {
        Value::Array(a) => {
            if a.len() != n {
                return Err(Error::format(path, field, format!("list has {} entries for {n} sections", a.len())));
            }
            Ok(a.iter().collect())
        }
        other => Ok(vec![other; n]),
    }
}

/// Resolve a path from the config: as given if it exists from the working directory,
/// otherwise relative to the config file's folder.
fn resolve(config: &Path, p: &str) -> PathBuf {
    let pb = PathBuf::from(p);
    if pb.is_absolute() || pb.exists() {
        return pb;
    }
    config.parent().map(|d| d.join(&pb)).filter(|q| q.exists()).unwrap_or(pb)
}

pub fn read_config(path: &Path) -> Result<RunConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let root: Value = serde_json::from_str(&text).map_err(|e| Error::format(path, "JSON", e.to_string()))?;
    let obj = root.as_object().ok_or_else(|| Error::format(path, "top level", "expected an object"))?;
    let settings = obj.get("settings");
    let root_path = match settings.and_then(|s| s.get("root_path")) {
        Some(v) => Some(PathBuf::from(want_str(path, "settings.root_path", v)?)),
        None => None,
    };
    let project = match settings.and_then(|s| s.get("project")) {
        Some(v) => Some(want_str(path, "settings.project", v)?.to_string()),
        None => None,
    };
    let (key, list) = match (obj.get("sections"), obj.get("section")) {
        (Some(v), _) => ("sections", v),
        (None, Some(v)) => ("section", v),
        (None, None) => return Err(Error::format(path, "sections", "missing")),
    };
    let list = match list {
        Value::Array(a) => a.clone(),
        Value::Object(_) => vec![list.clone()],
        other => return Err(Error::format(path, key, format!("expected a list of sections, found {other}"))),
    };
    if list.is_empty() {
        return Err(Error::format(path, key, "no sections"));
    }
    let n = list.len();
    let mut sections = Vec::with_capacity(n);
    for (i, s) in list.iter().enumerate() {
        let f = |k: &str| format!("{key}[{i}].{k}");
        let s = s.as_object().ok_or_else(|| Error::format(path, format!("{key}[{i}]"), "expected an object"))?;
        let get = |k: &str| -> Result<Option<PathBuf>> {
            match s.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => Ok(Some(resolve(path, want_str(path, &f(k), v)?))),
            }
        };
        let name = match s.get("name") {
            Some(v) => want_str(path, &f("name"), v)?.to_string(),
            None => format!("section{}", i + 1),
        };
        let input = if let Some(p) = get("adata_path")? {
            SectionInput::H5ad(p)
        } else if let Some(p) = get("visium_path")? {
            SectionInput::Visium(p)
        } else if let (Some(c), Some(e)) = (get("spot_coord_path")?, get("spot_exp_path")?) {
            SectionInput::Tables { coords: c, expression: e }
        } else if let Some(id) = s.get("id") {
            return Err(Error::format(path, f("id"), format!("{id} names a 10x dataset to download; spahdmap downloads nothing — download it and give visium_path")));
        } else {
            return Err(Error::format(
                path,
                format!("{key}[{i}]"),
                "no input: give adata_path, visium_path, or spot_coord_path with spot_exp_path",
            ));
        };
        let mut spec = SectionSpec::new(name, input);
        spec.image = get("image_path")?;
        sections.push(spec);
    }
    let mut paras = match obj.get("paras") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => return Err(Error::format(path, "paras", format!("expected an object, found {other}"))),
    };
    if let Some(v) = paras.remove("scale_rate") {
        for (s, v) in sections.iter_mut().zip(per_section(path, "paras.scale_rate", &v, n)?) {
            s.scale_rate = want_f64(path, "paras.scale_rate", v)?;
        }
    }
    if let Some(v) = paras.remove("radius") {
        for (s, v) in sections.iter_mut().zip(per_section(path, "paras.radius", &v, n)?) {
            s.radius = if v.is_null() { None } else { Some(want_f64(path, "paras.radius", v)?) };
        }
    }
    if let Some(v) = paras.remove("swap_coord") {
        for (s, v) in sections.iter_mut().zip(per_section(path, "paras.swap_coord", &v, n)?) {
            s.swap_coord = want_bool(path, "paras.swap_coord", v)?;
        }
    }
    if let Some(v) = paras.remove("create_mask") {
        for (s, v) in sections.iter_mut().zip(per_section(path, "paras.create_mask", &v, n)?) {
            s.create_mask = want_bool(path, "paras.create_mask", v)?;
        }
    }
    if let Some(v) = paras.remove("color_norm") {
        for (s, v) in sections.iter_mut().zip(per_section(path, "paras.color_norm", &v, n)?) {
            s.color_norm = want_bool(path, "paras.color_norm", v)?;
        }
    }
    if let Some(v) = paras.remove("image_type") {
        for (s, v) in sections.iter_mut().zip(per_section(path, "paras.image_type", &v, n)?) {
            s.image_type = if v.is_null() { None } else { Some(want_str(path, "paras.image_type", v)?.to_string()) };
        }
    }
    let mut reference = Vec::new();
    match paras.remove("reference") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (q, r) in m {
                let r = want_str(path, &format!("paras.reference.{q}"), &r)?.to_string();
                for name in [&q, &r] {
                    if !sections.iter().any(|s| &s.name == name) {
                        return Err(Error::format(
                            path,
                            format!("paras.reference.{q}"),
                            format!("no section named {name:?}"),
                        ));
                    }
                }
                reference.push((q, r));
            }
        }
        Some(other) => {
            return Err(Error::format(
                path,
                "paras.reference",
                format!("expected an object {{query: reference}}, found {other}"),
            ))
        }
    }
    for s in &sections {
        s.validate().map_err(|e| match e {
            Error::Setting { field, msg } => Error::format(path, format!("paras ({field})"), msg),
            e => e,
        })?;
    }
    Ok(RunConfig { root_path, project, sections, reference, paras })
}
