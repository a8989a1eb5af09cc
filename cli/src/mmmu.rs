//! `phi3v mmmu run` and `phi3v mmmu compare`: the MMMU accuracy-parity protocol
//! (`phi3v-accuracy`) with the model on any device.

use burn_phi3v::kernels::Kernels;
use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::DType;
use burn_phi3v::device::{DeviceInfo, dtype_name};
use burn_phi3v::{GenerationParams, LoadedModel, generate};
use clap::{Args, Subcommand};
use phi3v_accuracy::{Answer, Answerer, Query, RunMeta, dataset};
use phi3v_devices::DeviceFn;

use crate::CliResult;

#[derive(Subcommand, Clone)]
pub enum MmmuCommand {
    /// Answer MMMU items (greedy) and score them with the official protocol; resumes.
    Run(RunArgs),
    /// Compare two runs item by item (the cross-device report).
    Compare(CompareArgs),
}

#[derive(Args, Clone)]
pub struct RunArgs {
    /// MMMU data: the HF dataset folder (`{Subject}/{split}-*.parquet`), a parquet file, or a
    /// JSONL file (images relative to it or to --image-root).
    #[arg(long)]
    data: PathBuf,
    /// Folder holding the images of a JSONL set.
    #[arg(long)]
    image_root: Option<PathBuf>,
    /// Output JSONL (summary JSON and Markdown report are written beside it).
    #[arg(long)]
    out: PathBuf,
    /// Model folder (default: the tiny checkpoint shipped with the repository).
    #[arg(long)]
    model: Option<PathBuf>,
    #[command(flatten)]
    target: crate::DeviceArgs,
    /// Split to read (dev, validation, test).
    #[arg(long, default_value = "validation")]
    split: String,
    /// Subjects (names or short names), comma-separated; default all.
    #[arg(long, value_delimiter = ',')]
    subjects: Vec<String>,
    /// At most this many items.
    #[arg(long)]
    limit: Option<usize>,
    /// Crops per image (default: the model's preprocessor config; record it, it moves scores).
    #[arg(long)]
    num_crops: Option<usize>,
    /// Greedy decoding budget (the vendor protocol uses 10).
    #[arg(long, default_value_t = 10)]
    max_new_tokens: usize,
}

#[derive(Args, Clone)]
pub struct CompareArgs {
    /// First run's JSONL (e.g. the reference device).
    a: PathBuf,
    /// Second run's JSONL.
    b: PathBuf,
    /// Write the Markdown report here (default: print it).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The model as an MMMU answerer: greedy, stop on EOS, option-letter log-probabilities at the
/// first generated position (the `▁X` token of each letter, which is how the tokenizer spells a
/// word-initial letter; the bare `X` when the vocabulary lacks it).
struct ModelAnswerer<'a, B: Kernels> {
    loaded: &'a LoadedModel<B>,
}

impl<B: Kernels> Answerer for ModelAnswerer<'_, B> {
    type Error = burn_phi3v::Phi3vError;

    fn answer(&mut self, q: &Query<'_>) -> Result<Answer, Self::Error> {
        let m = self.loaded;
        let prompt = m.processor.process(&q.prompt.chat, q.images)?;
        let letter_ids: Vec<u32> = q
            .option_letters
            .iter()
            .filter_map(|l| m.processor.token_id(&format!("▁{l}")).or_else(|| m.processor.token_id(l)))
            .collect();
        let params = GenerationParams {
            max_new_tokens: q.max_new_tokens,
            stop_token_ids: m.stop_token_ids(),
            first_step_logprobs: letter_ids.clone(),
            ..Default::default()
        };
        let out = generate(&m.model, &m.processor, &[&prompt], &[params], |_| {})?.remove(0);
        let option_logprobs: BTreeMap<String, f32> = if letter_ids.len() == q.option_letters.len() {
            q.option_letters.iter().cloned().zip(out.first_step_logprobs.iter().copied()).collect()
        } else {
            BTreeMap::new()
        };
        Ok(Answer {
            text: out.text,
            prompt_tokens: out.prompt_tokens,
            generated_tokens: Some(out.token_ids.len()),
            option_logprobs,
        })
    }
}

struct RunJob(RunArgs);

impl DeviceFn for RunJob {
    type Output = CliResult<()>;

    fn run<B: Kernels>(self, device: &B::Device, info: &DeviceInfo, dtype: DType) -> CliResult<()> {
        let a = self.0;
        let model_dir = a.model.clone().unwrap_or_else(|| PathBuf::from(crate::EMBEDDED_MODEL));
        let filter = dataset::Filter {
            split: Some(a.split.clone()),
            subjects: if a.subjects.is_empty() { None } else { Some(dataset::resolve_subjects(&a.subjects, true)?) },
            limit: a.limit,
            ..Default::default()
        };
        let ds = if a.data.extension().is_some_and(|e| e == "jsonl") {
            dataset::read_jsonl(&a.data, a.image_root.as_deref(), &filter)?
        } else {
            dataset::open(&a.data, &filter)?
        };
        for s in &ds.skipped {
            eprintln!("skipped {} ({}): {}", s.id.as_deref().unwrap_or("?"), s.location, s.error);
        }
        let mut loaded = LoadedModel::<B>::load(&model_dir, device, dtype, None)?;
        if let Some(n) = a.num_crops {
            loaded.processor.image_config.num_crops = n;
        }
        let mut meta = RunMeta {
            model: model_dir.display().to_string(),
            device: format!("{} ({})", info.spec, info.name),
            num_crops: Some(loaded.processor.image_config.num_crops as u32),
            max_new_tokens: a.max_new_tokens,
            dataset: a.data.display().to_string(),
            ..RunMeta::default()
        };
        meta.notes.insert("dtype".into(), dtype_name(dtype).into());
        meta.notes.insert("decoding".into(), "greedy".into());
        let bar = indicatif::ProgressBar::new(ds.items.len() as u64).with_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let mut answerer = ModelAnswerer { loaded: &loaded };
        let summary = phi3v_accuracy::run(&ds, &mut answerer, &a.out, &meta, |p| {
            bar.set_position(p.done as u64);
            bar.set_message(format!("acc {:.3}", p.correct as f64 / p.done.max(1) as f64));
        })?;
        bar.finish_and_clear();
        println!("{}", summary.to_markdown());
        Ok(())
    }
}

pub fn run(cmd: MmmuCommand) -> CliResult<()> {
    match cmd {
        MmmuCommand::Run(a) => {
            let target = a.target.clone();
            crate::with_device(&target.device, target.dtype.as_deref(), RunJob(a))?
        }
        MmmuCommand::Compare(c) => {
            for run in [&c.a, &c.b] {
                if !run.is_file() {
                    return Err(format!("run file {} does not exist", run.display()).into());
                }
            }
            let cmp = phi3v_accuracy::compare::compare_files(&c.a, &c.b)?;
            let md = cmp.to_markdown();
            match &c.out {
                Some(p) => std::fs::write(p, &md).map_err(|e| format!("cannot write {}: {e}", p.display()))?,
                None => println!("{md}"),
            }
            if let Some(p) = &c.json {
                let j = serde_json::to_string_pretty(&cmp)?;
                std::fs::write(p, j).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
            }
            Ok(())
        }
    }
}
