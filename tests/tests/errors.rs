//! Bad checkpoints, configs, images and prompts give typed errors naming the culprit.

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::tensor::DType;
use burn_phi3v::image_processor::decode_image;
use burn_phi3v::{LoadedModel, Phi3vError};
use phi3v_tests::model_dir;

/// A copy of a tiny checkpoint in a fresh temporary folder.
fn copy_model(model: &str, tag: &str) -> PathBuf {
    let dst = std::env::temp_dir().join(format!("phi3v-err-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(model_dir(model)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

fn load(dir: &Path) -> Result<LoadedModel<Flex>, Phi3vError> {
    LoadedModel::<Flex>::load(dir, &Default::default(), DType::F32, None)
}

/// Rewrites `model.safetensors` of `dir` with `edit` applied to its (name, dtype, shape, bytes) list.
fn rewrite(dir: &Path, edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut list: Vec<_> = st.iter().map(|(n, v)| (n.to_string(), v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    list.sort_by(|a, b| a.0.cmp(&b.0));
    edit(&mut list);
    let views: Vec<(String, safetensors::tensor::TensorView)> = list
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

const QKV0: &str = "model.layers.0.self_attn.qkv_proj.weight";

#[test]
fn the_tiny_checkpoints_load_strictly() {
    load(&model_dir("phi3v-tiny")).expect("sharded checkpoint");
    load(&model_dir("phi35v-tiny")).expect("single-file checkpoint");
}

#[test]
fn truncated_file_is_a_typed_error() {
    let dir = copy_model("phi35v-tiny", "trunc");
    let path = dir.join("model.safetensors");
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 1000).unwrap();
    match load(&dir) {
        Err(Phi3vError::Safetensors { path: p, reason }) => {
            assert_eq!(p, path);
            assert!(reason.contains("truncated") || reason.contains("does not match"), "{reason}");
        }
        other => panic!("expected Safetensors error, got {other:?}"),
    }
}

#[test]
fn header_past_the_end_is_a_typed_error() {
    let dir = copy_model("phi35v-tiny", "hdr");
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    assert!(matches!(load(&dir), Err(Phi3vError::Safetensors { .. })));
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_model("phi35v-tiny", "missing");
    rewrite(&dir, |l| l.retain(|t| t.0 != QKV0));
    match load(&dir) {
        Err(Phi3vError::MissingTensor { name }) => assert_eq!(name, QKV0),
        other => panic!("expected MissingTensor, got {other:?}"),
    }
}

#[test]
fn wrong_shape_is_named() {
    let dir = copy_model("phi35v-tiny", "shape");
    rewrite(&dir, |l| {
        let t = l.iter_mut().find(|t| t.0 == QKV0).unwrap();
        t.2 = vec![32, 96];
    });
    match load(&dir) {
        Err(Phi3vError::ShapeMismatch { name, expected, found }) => {
            assert_eq!(name, QKV0);
            assert_eq!((expected, found), (vec![96, 32], vec![32, 96]));
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
}

#[test]
fn unused_tensor_is_named() {
    let dir = copy_model("phi35v-tiny", "unused");
    rewrite(&dir, |l| l.push(("model.extra.weight".into(), safetensors::Dtype::F32, vec![2], vec![0; 8])));
    match load(&dir) {
        Err(Phi3vError::UnusedTensors { names }) => assert_eq!(names, ["model.extra.weight"]),
        other => panic!("expected UnusedTensors, got {other:?}"),
    }
}

#[test]
fn wrong_dtype_is_named() {
    let dir = copy_model("phi35v-tiny", "dtype");
    rewrite(&dir, |l| {
        let t = l.iter_mut().find(|t| t.0 == QKV0).unwrap();
        t.1 = safetensors::Dtype::I16;
    });
    match load(&dir) {
        Err(Phi3vError::UnsupportedDtype { name, .. }) => assert_eq!(name, QKV0),
        other => panic!("expected UnsupportedDtype, got {other:?}"),
    }
}

#[test]
fn duplicated_tensor_across_shards_is_named() {
    let dir = copy_model("phi3v-tiny", "dup");
    // Put a tensor of shard 1 into shard 2 as well.
    let s1 = std::fs::read(dir.join("model-00001-of-00002.safetensors")).unwrap();
    let st1 = safetensors::SafeTensors::deserialize(&s1).unwrap();
    let s2_path = dir.join("model-00002-of-00002.safetensors");
    let s2 = std::fs::read(&s2_path).unwrap();
    let st2 = safetensors::SafeTensors::deserialize(&s2).unwrap();
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = st2.iter().map(|(n, v)| (n.to_string(), v)).collect();
    views.push((QKV0.to_string(), st1.tensor(QKV0).unwrap()));
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(&s2_path, out).unwrap();
    match load(&dir) {
        Err(Phi3vError::DuplicateTensor { name, .. }) => assert_eq!(name, QKV0),
        other => panic!("expected DuplicateTensor, got {other:?}"),
    }
}

#[test]
fn index_naming_a_missing_shard_is_an_error() {
    let dir = copy_model("phi3v-tiny", "shard");
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    match load(&dir) {
        Err(Phi3vError::ShardIndex { reason, .. }) => assert!(reason.contains("model-00002-of-00002"), "{reason}"),
        other => panic!("expected ShardIndex, got {other:?}"),
    }
}

#[test]
fn unknown_rope_scaling_type_names_the_field() {
    let dir = copy_model("phi35v-tiny", "rope");
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["rope_scaling"]["type"] = "dynamic".into();
    std::fs::write(&path, v.to_string()).unwrap();
    match load(&dir) {
        Err(Phi3vError::InvalidField { field, .. }) => assert_eq!(field, "rope_scaling.type"),
        other => panic!("expected InvalidField, got {other:?}"),
    }
}

#[test]
fn non_image_bytes_and_mismatched_tags_are_typed_errors() {
    assert!(decode_image(b"definitely not an image", "notes.txt", u64::MAX).unwrap_err().to_string().contains("notes.txt"));
    let m = load(&model_dir("phi35v-tiny")).unwrap();
    let img = burn_phi3v::image_processor::load_image(&phi3v_tests::fixtures_dir().join("images/chelsea.png"), u64::MAX).unwrap();
    for (prompt, n) in [("<|image_1|> two", 2), ("<|image_1|><|image_1|>", 1), ("<|image_2|>", 1), ("no tag", 1), ("<|image_1|>", 0)] {
        let images = vec![img.clone(); n];
        assert!(matches!(m.processor.process(prompt, &images), Err(Phi3vError::ImageTags(_))), "{prompt} with {n} images");
    }
    // Tags out of order are accepted: image k fills the run of <|image_k|>.
    let p = m.processor.process("<|image_2|> and <|image_1|>", &[img.clone(), img]).unwrap();
    assert_eq!(p.input_ids.iter().find(|&&i| i < 0), Some(&-2));
}
