//! The fixture parity check, written once for every backend and dtype. It returns a report of
//! what it measured; tests assert on it and the GPU parity run prints it.

use burn_phi3v::kernels::Kernels;
use burn::tensor::{DType, Tensor, TensorData};
use burn_phi3v::image_processor::{ProcessedImage, load_image};
use burn_phi3v::model::CropGrid;
use burn_phi3v::{LoadedModel, Phi3VForCausalLM};

use crate::fixtures::{Case, model_dir};
use crate::tolerance::{JPEG_LOGITS, JPEG_PIXELS, Tolerance, max_abs_diff};

/// What one case measured on one backend.
#[derive(Debug, Clone, Default)]
pub struct CaseReport {
    /// Case name.
    pub case: String,
    /// Largest pixel error over all crops (pooled and strided samples).
    pub pixels_max_err: Option<f32>,
    /// Largest error of the projected image tokens.
    pub vision_embeds_max_err: Option<f32>,
    /// Largest error of the last-position hidden states over all layers.
    pub hidden_max_err: f32,
    /// Largest error of the reference's top-5 logits at every position.
    pub topk_logits_max_err: f32,
    /// Largest error over all last-position logits.
    pub logits_last_max_err: f32,
    /// Positions whose top-1 id agrees / positions.
    pub top1_agree: (usize, usize),
    /// Greedy ids produced.
    pub greedy_ids: Vec<i64>,
    /// Largest error of the reference's greedy top-5 logits (steps before any divergence).
    pub greedy_logits_max_err: f32,
    /// Whether every greedy id equals the reference's.
    pub greedy_equal: bool,
    /// The first greedy step at which the reference's top-1 and top-2 logits are within the
    /// dtype's `clear_gap` (a near-tie: from there on two correct runs may choose differently);
    /// `None` when every step has a clear gap.
    pub greedy_first_tie: Option<usize>,
    /// Every failed check, in words; empty when the case passes.
    pub failures: Vec<String>,
}

impl CaseReport {
    /// Panics with every failure listed.
    pub fn assert_ok(&self) {
        assert!(self.failures.is_empty(), "case {} failed:\n  {}", self.case, self.failures.join("\n  "));
    }

    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(what());
        }
    }
}

/// 16×16 block means and strided samples of one crop, as the fixtures store them.
fn pooled_and_strided(crop: &[f32]) -> (Vec<f32>, Vec<f32>) {
    const S: usize = 336;
    const B: usize = 16;
    const N: usize = S / B;
    let mut pooled = Vec::with_capacity(3 * N * N);
    let mut strided = Vec::with_capacity(3 * N * N);
    for ch in 0..3 {
        let plane = &crop[ch * S * S..(ch + 1) * S * S];
        for a in 0..N {
            for b in 0..N {
                let mut sum = 0.0f64;
                for y in 0..B {
                    for x in 0..B {
                        sum += plane[(a * B + y) * S + b * B + x] as f64;
                    }
                }
                pooled.push((sum / (B * B) as f64) as f32);
                strided.push(plane[(8 + B * a) * S + 8 + B * b]);
            }
        }
    }
    (pooled, strided)
}

/// Top-k of a row, largest first.
fn topk(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.select_nth_unstable_by(k, |a, b| row[*b].total_cmp(&row[*a]));
    let mut top = idx[..k].to_vec();
    top.sort_by(|a, b| row[*b].total_cmp(&row[*a]));
    top
}

fn to_vec<B: Kernels, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 data")
}

/// Logits of positions `range` of `hidden` (`[1, S, D]`), as host rows.
fn logits_rows<B: Kernels>(model: &Phi3VForCausalLM<B>, hidden: &Tensor<B, 3>, start: usize, len: usize) -> Vec<f32> {
    to_vec(model.logits(hidden.clone().narrow(1, start, len)))
}

/// Last-position logits of one sequence computed from scratch (no cache), as the reference's
/// greedy loop did.
pub fn last_logits_by_recompute<B: Kernels>(model: &Phi3VForCausalLM<B>, ids: &[i64], features: Option<Tensor<B, 2>>) -> Vec<f32> {
    let n = ids.len();
    let embeds = model.embed_inputs(&[ids.to_vec()], features).expect("inputs embed");
    let mut cache = model.new_cache();
    let out = model.forward(embeds, &[(0..n).collect()], &[model.rope_regime(n - 1)], &mut cache, None, false);
    logits_rows(model, &out.last_hidden_state, n - 1, 1)
}

/// Greedy ids by full recomputation at every step.
pub fn greedy_by_recompute<B: Kernels>(model: &Phi3VForCausalLM<B>, prompt: &[i64], features: Option<Tensor<B, 2>>, steps: usize) -> Vec<u32> {
    let mut ids = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..steps {
        let next = topk(&last_logits_by_recompute(model, &ids, features.clone()), 1)[0] as u32;
        out.push(next);
        ids.push(next as i64);
    }
    out
}

/// Uploads preprocessed images as one `[Σ crops, 3, 336, 336]` tensor.
pub fn pixel_tensor<B: Kernels>(images: &[ProcessedImage], device: &B::Device, dtype: DType) -> Option<(Tensor<B, 4>, Vec<CropGrid>)> {
    if images.is_empty() {
        return None;
    }
    let crops: usize = images.iter().map(|i| i.num_used_crops).sum();
    let data: Vec<f32> = images.iter().flat_map(|i| i.pixel_values.iter().copied()).collect();
    let t = Tensor::from_data(TensorData::new(data, [crops, 3, 336, 336]), (device, dtype));
    Some((t, images.iter().map(|i| i.crop_grid).collect()))
}

/// Which pixels a lossy image enters the check with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JpegSource {
    /// `<name>.decoded.png`: the pixels the reference's decoder produced, so the pipeline is
    /// compared exactly (fixtures README).
    ReferenceDecoded,
    /// The JPEG file through our decoder: pixels within [`JPEG_PIXELS`]; value errors are
    /// reported, and greedy ids must still agree where the reference's gaps are clear.
    OwnDecoder,
}

/// Runs one fixture case on `device` in `dtype` and measures everything the fixtures pin down.
pub fn run_case<B: Kernels>(case: &Case, device: &B::Device, dtype: DType) -> CaseReport {
    run_case_with::<B>(case, device, dtype, JpegSource::ReferenceDecoded)
}

/// [`run_case`] with a choice of JPEG source.
pub fn run_case_with<B: Kernels>(case: &Case, device: &B::Device, dtype: DType, jpeg: JpegSource) -> CaseReport {
    let is_jpeg = |f: &String| f.ends_with(".jpg") || f.ends_with(".jpeg");
    let own_jpeg = jpeg == JpegSource::OwnDecoder && case.images.iter().any(is_jpeg);
    let mut tol = Tolerance::for_dtype(dtype);
    if own_jpeg {
        tol.assert_values = false;
        tol.clear_gap = tol.clear_gap.max(2.0 * JPEG_LOGITS);
    }
    let mut r = CaseReport {
        case: case.name.clone(),
        ..Default::default()
    };
    let loaded = LoadedModel::<B>::load(&model_dir(&case.model), device, dtype, None).expect("tiny checkpoint loads");
    let model = &loaded.model;

    // 1. Prompt and images → ids and pixels.
    let images: Vec<_> = case
        .images
        .iter()
        .map(|f| {
            let path = match jpeg {
                JpegSource::ReferenceDecoded if is_jpeg(f) => {
                    let stem = f.rsplit_once('.').map_or(f.as_str(), |(s, _)| s);
                    Case::image_path(&format!("{stem}.decoded.png"))
                }
                _ => Case::image_path(f),
            };
            load_image(&path, u64::MAX).expect("fixture image decodes")
        })
        .collect();
    let processed = loaded.processor.process(&case.prompt, &images).expect("prompt processes");
    let ref_ids = case.tensor("input_ids").i64();
    r.check(processed.input_ids == ref_ids, || {
        let first = processed.input_ids.iter().zip(ref_ids).position(|(a, b)| a != b);
        format!("input_ids differ (len {} vs {}, first difference at {first:?})", processed.input_ids.len(), ref_ids.len())
    });
    if !case.images.is_empty() {
        let sizes: Vec<i64> = processed.images.iter().flat_map(|i| i.hd_size.map(|s| s as i64)).collect();
        r.check(sizes == case.tensor("image_sizes").i64(), || format!("image_sizes {sizes:?}"));
        let counts: Vec<u64> = processed.images.iter().map(|i| i.num_img_tokens as u64).collect();
        let want: Vec<u64> = case.json["num_img_tokens"].as_array().map(|a| a.iter().filter_map(|v| v.as_u64()).collect()).unwrap_or_default();
        r.check(counts == want, || format!("image token counts {counts:?}, reference {want:?}"));
        let mut pix = 0.0f32;
        for (i, img) in processed.images.iter().enumerate() {
            let crop_len = 3 * 336 * 336;
            let (mut pooled, mut strided) = (Vec::new(), Vec::new());
            for c in 0..img.num_used_crops {
                let (p, s) = pooled_and_strided(&img.pixel_values[c * crop_len..(c + 1) * crop_len]);
                pooled.extend(p);
                strided.extend(s);
            }
            pix = pix
                .max(max_abs_diff(&pooled, case.tensor(&format!("crops_pooled16.{i}")).f32()))
                .max(max_abs_diff(&strided, case.tensor(&format!("crops_strided16.{i}")).f32()));
        }
        r.pixels_max_err = Some(pix);
        let bound = if own_jpeg { JPEG_PIXELS } else { tol.pixels };
        r.check(pix <= bound, || format!("pixel error {pix:e} > {bound:e}"));
    }

    // 2. Image tokens.
    let features = pixel_tensor::<B>(&processed.images, device, dtype)
        .map(|(px, grids)| model.embed_images(px, &grids).expect("images embed"));
    if let Some(f) = &features {
        let got = to_vec(f.clone());
        let err = max_abs_diff(&got, case.tensor("vision_embeds").f32());
        r.vision_embeds_max_err = Some(err);
        if tol.assert_values {
            r.check(err <= tol.vision_embeds, || format!("vision_embeds error {err:e} > {:e}", tol.vision_embeds));
        }
        r.failures.extend(tol.gross_vision_failure("vision_embeds", err));
    }

    // 3. One pass over the prompt: hidden states and top-k logits at every position.
    let seq = ref_ids.len();
    let ids = vec![ref_ids.to_vec()];
    let embeds = model.embed_inputs(&ids, features.clone()).expect("inputs embed");
    let positions = vec![(0..seq).collect::<Vec<_>>()];
    let mut cache = model.new_cache();
    let out = model.forward(embeds, &positions, &[model.rope_regime(seq - 1)], &mut cache, None, true);
    let hidden_ref = case.tensor("hidden_last").f32();
    let d = model.config.text.hidden_size;
    let mut h_err = 0.0f32;
    for (l, h) in out.hidden_states.expect("requested").into_iter().enumerate() {
        let last = to_vec(h.narrow(1, seq - 1, 1));
        h_err = h_err.max(max_abs_diff(&last, &hidden_ref[l * d..(l + 1) * d]));
    }
    r.hidden_max_err = h_err;
    if tol.assert_values {
        r.check(h_err <= tol.hidden, || format!("hidden_last error {h_err:e} > {:e}", tol.hidden));
    }

    let (ref_top_ids, ref_top_logits) = (case.tensor("topk_ids").i64(), case.tensor("topk_logits").f32());
    let vocab = model.config.text.vocab_size;
    let k = 5;
    let (mut lerr, mut agree, mut clear_disagree) = (0.0f32, 0usize, Vec::new());
    const CHUNK: usize = 512;
    for start in (0..seq).step_by(CHUNK) {
        let len = CHUNK.min(seq - start);
        let rows = logits_rows(model, &out.last_hidden_state, start, len);
        for p in start..start + len {
            let row = &rows[(p - start) * vocab..(p - start + 1) * vocab];
            let rid = &ref_top_ids[p * k..(p + 1) * k];
            let rl = &ref_top_logits[p * k..(p + 1) * k];
            for j in 0..k {
                lerr = lerr.max((row[rid[j] as usize] - rl[j]).abs());
            }
            let ours = topk(row, k + 1);
            if ours[0] as i64 == rid[0] {
                agree += 1;
            }
            for j in 0..k {
                let above_clear = j == 0 || rl[j - 1] - rl[j] > tol.clear_gap;
                let below_clear = j + 1 == k || rl[j] - rl[j + 1] > tol.clear_gap;
                if above_clear && below_clear && ours[j] as i64 != rid[j] {
                    // The reference's 6th logit is unknown: at j = 4 accept a near-tie with it.
                    let tie_below = j + 1 == k && (row[ours[j]] - row[rid[j] as usize]).abs() <= tol.clear_gap;
                    if !tie_below {
                        clear_disagree.push((p, j));
                    }
                }
            }
            if p == seq - 1 {
                r.logits_last_max_err = max_abs_diff(row, case.tensor("logits_last").f32());
            }
        }
    }
    r.topk_logits_max_err = lerr;
    r.top1_agree = (agree, seq);
    if tol.assert_values {
        r.check(lerr <= tol.logits, || format!("top-k logits error {lerr:e} > {:e}", tol.logits));
        let last = r.logits_last_max_err;
        r.check(last <= tol.logits, || format!("logits_last error {last:e} > {:e}", tol.logits));
    }
    r.check(clear_disagree.is_empty(), || {
        format!("top-k ids differ at {} (position, rank) pairs with clear gaps, first {:?}", clear_disagree.len(), &clear_disagree[..clear_disagree.len().min(5)])
    });

    // 4. Greedy continuation, recomputing the whole sequence each step as the reference did.
    let (gids, glog) = (case.tensor("greedy_topk_ids").i64(), case.tensor("greedy_topk_logits").f32());
    let mut seq_ids = ref_ids.to_vec();
    r.greedy_equal = true;
    let steps = case.tensor("greedy_ids").i64().len();
    r.greedy_first_tie = (0..steps).find(|&step| glog[step * k] - glog[step * k + 1] <= tol.clear_gap);
    for step in 0..case.tensor("greedy_ids").i64().len() {
        let row = last_logits_by_recompute(model, &seq_ids, features.clone());
        let next = topk(&row, 1)[0] as i64;
        r.greedy_ids.push(next);
        let rid = &gids[step * k..(step + 1) * k];
        let rl = &glog[step * k..(step + 1) * k];
        if next != rid[0] {
            r.greedy_equal = false;
            let gap = rl[0] - rl[1];
            r.check(gap <= tol.clear_gap, || format!("greedy step {step}: {next} instead of {} (reference gap {gap})", rid[0]));
            break;
        }
        for j in 0..k {
            r.greedy_logits_max_err = r.greedy_logits_max_err.max((row[rid[j] as usize] - rl[j]).abs());
        }
        seq_ids.push(next);
    }
    if tol.assert_values {
        let e = r.greedy_logits_max_err;
        r.check(e <= tol.logits, || format!("greedy logits error {e:e} > {:e}", tol.logits));
    }
    r
}

/// What a vision probe measured: the CLIP tower and the HD merge + projector on synthetic
/// pixels, with no image preprocessing involved.
#[derive(Debug, Clone, Default)]
pub struct ProbeReport {
    /// Model folder name.
    pub model: String,
    /// Largest error of the CLIP features (second-to-last layer, CLS dropped).
    pub clip_features_max_err: f32,
    /// Largest error of the projected image tokens.
    pub vision_embeds_max_err: f32,
    /// Failed checks, in words.
    pub failures: Vec<String>,
}

impl ProbeReport {
    /// Panics with every failure listed.
    pub fn assert_ok(&self) {
        assert!(self.failures.is_empty(), "vision probe {} failed:\n  {}", self.model, self.failures.join("\n  "));
    }
}

/// The probe's pixels: `1.5·sin(0.05x + 0.031(c+1)y + 0.7n + 1.3c)` in f64, rounded to f32
/// (fixtures README, "Vision probes"); 3 crops: global, top tile, bottom tile.
pub fn probe_pixels() -> Vec<f32> {
    let mut v = Vec::with_capacity(3 * 3 * 336 * 336);
    for n in 0..3 {
        for c in 0..3 {
            for y in 0..336 {
                for x in 0..336 {
                    let (n, c, y, x) = (n as f64, c as f64, y as f64, x as f64);
                    v.push((1.5 * (0.05 * x + 0.031 * (c + 1.0) * y + 0.7 * n + 1.3 * c).sin()) as f32);
                }
            }
        }
    }
    v
}

/// Runs `vision_probe.<model>.safetensors` on `device` in `dtype`.
pub fn run_vision_probe<B: Kernels>(model_name: &str, device: &B::Device, dtype: DType) -> ProbeReport {
    let tol = Tolerance::for_dtype(dtype);
    let tensors = crate::fixtures::read_tensors(&crate::fixtures::fixtures_dir().join(format!("cases/vision_probe.{model_name}.safetensors")));
    let loaded = LoadedModel::<B>::load(&model_dir(model_name), device, dtype, None).expect("tiny checkpoint loads");
    let vision = loaded.model.vision_embed_tokens.as_ref().expect("vision tower");
    let sizes = tensors["image_sizes"].i64();
    let grid = [sizes[0] as usize / 336, sizes[1] as usize / 336];
    let px = Tensor::<B, 4>::from_data(TensorData::new(probe_pixels(), [3, 3, 336, 336]), (device, dtype));
    let mut r = ProbeReport {
        model: model_name.to_string(),
        ..Default::default()
    };
    r.clip_features_max_err = max_abs_diff(&to_vec(vision.img_processor.forward(px.clone())), tensors["clip_features"].f32());
    r.vision_embeds_max_err = max_abs_diff(&to_vec(loaded.model.embed_images(px, &[grid]).expect("embeds")), tensors["vision_embeds"].f32());
    let (c, e) = (r.clip_features_max_err, r.vision_embeds_max_err);
    r.failures.extend(tol.gross_vision_failure("clip_features", c));
    r.failures.extend(tol.gross_vision_failure("vision_embeds", e));
    if tol.assert_values {
        if c > tol.clip_features {
            r.failures.push(format!("clip_features error {c:e} > {:e}", tol.clip_features));
        }
        if e > tol.vision_embeds {
            r.failures.push(format!("vision_embeds error {e:e} > {:e}", tol.vision_embeds));
        }
    }
    r
}
