//! Readers for tests/fixtures: tiny checkpoints, images and the reference's tensors per case.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

/// `tests/fixtures` of this repository: `$PHI3V_FIXTURES` if set, else the source tree this was
/// built from, else `tests/fixtures` under the current directory (a binary carried elsewhere).
pub fn fixtures_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PHI3V_FIXTURES") {
        return PathBuf::from(dir);
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    if built.is_dir() { built } else { PathBuf::from("tests/fixtures") }
}

/// A tiny checkpoint folder (`phi3v-tiny`, `phi35v-tiny`).
pub fn model_dir(model: &str) -> PathBuf {
    fixtures_dir().join("models").join(model)
}

/// One reference tensor.
#[derive(Debug, Clone)]
pub enum FixtureTensor {
    /// F32 values.
    F32 { shape: Vec<usize>, data: Vec<f32> },
    /// I64 values.
    I64 { shape: Vec<usize>, data: Vec<i64> },
}

impl FixtureTensor {
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            Self::F32 { shape, .. } | Self::I64 { shape, .. } => shape,
        }
    }

    /// F32 values (panics on an I64 tensor: a fixture bug, not a port bug).
    pub fn f32(&self) -> &[f32] {
        match self {
            Self::F32 { data, .. } => data,
            Self::I64 { .. } => panic!("fixture tensor is I64, expected F32"),
        }
    }

    /// I64 values.
    pub fn i64(&self) -> &[i64] {
        match self {
            Self::I64 { data, .. } => data,
            Self::F32 { .. } => panic!("fixture tensor is F32, expected I64"),
        }
    }
}

/// Reads every tensor of a fixture safetensors file.
pub fn read_tensors(path: &Path) -> HashMap<String, FixtureTensor> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
    st.iter()
        .map(|(name, view)| {
            let shape = view.shape().to_vec();
            let raw = view.data();
            let t = match view.dtype() {
                Dtype::F32 => FixtureTensor::F32 {
                    shape,
                    data: raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                },
                Dtype::I64 => FixtureTensor::I64 {
                    shape,
                    data: raw
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                        .collect(),
                },
                other => panic!("{}: unexpected fixture dtype {other:?} for {name}", path.display()),
            };
            (name.to_string(), t)
        })
        .collect()
}

/// One reference case (`cases/<name>.json` + `cases/<name>.safetensors`).
#[derive(Debug, Clone)]
pub struct Case {
    /// Case name.
    pub name: String,
    /// Model folder name.
    pub model: String,
    /// Prompt in chat format with `<|image_k|>` tags.
    pub prompt: String,
    /// Image files (under `fixtures/images`), in image order.
    pub images: Vec<String>,
    /// The case's JSON summary.
    pub json: Value,
    /// The reference's tensors.
    pub tensors: HashMap<String, FixtureTensor>,
}

impl Case {
    /// Names of all cases, from `cases/index.json`.
    pub fn names() -> Vec<String> {
        let index = fixtures_dir().join("cases/index.json");
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&index).expect("index.json")).expect("index.json");
        let cases = v["cases"].as_object().map(|o| o.keys().cloned().collect()).or_else(|| {
            v["cases"].as_array().map(|a| {
                a.iter()
                    .filter_map(|c| c.get("name").or(c.get("case")).and_then(|n| n.as_str()).map(str::to_string))
                    .collect()
            })
        });
        cases.expect("index.json lists cases")
    }

    /// Loads case `name`.
    pub fn load(name: &str) -> Case {
        let dir = fixtures_dir().join("cases");
        let json: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap_or_else(|e| panic!("{name}.json: {e}")),
        )
        .expect("case json");
        let images = json["images"]
            .as_array()
            .map(|a| a.iter().filter_map(|i| i["file"].as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        Case {
            name: name.to_string(),
            model: json["model"].as_str().expect("model").to_string(),
            prompt: json["prompt"].as_str().expect("prompt").to_string(),
            images,
            tensors: read_tensors(&dir.join(format!("{name}.safetensors"))),
            json,
        }
    }

    /// A reference tensor (panics with the name if absent).
    pub fn tensor(&self, name: &str) -> &FixtureTensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("case {} has no tensor {name}", self.name))
    }

    /// Path of image file `file`.
    pub fn image_path(file: &str) -> PathBuf {
        fixtures_dir().join("images").join(file)
    }
}
