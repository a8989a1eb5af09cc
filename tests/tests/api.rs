//! The front door (`burn_phi3v::Pipeline`, `Request`) on the CPU: loading by device string and
//! by backend type, images as paths, bytes or decoded images, blocking / streaming / batch
//! generation agreeing with each other and with the fixtures' greedy tokens, typed errors.

use burn_phi3v::backends::{Cpu, cpu};
use burn_phi3v::burn::tensor::DType;
use burn_phi3v::image_processor::{ImageError, load_image};
use burn_phi3v::{
    DeviceError, FinishReason, GenerationOutput, ImageInput, LoadOptions, LoadedModel, Phi3vError, Pipeline, Request,
};
use phi3v_tests::{Case, model_dir};

fn pipeline(model: &str) -> Pipeline {
    Pipeline::from_pretrained(model_dir(model), "cpu", &LoadOptions::default()).expect("tiny checkpoint on cpu")
}

/// A fixture case's image file (the reference-decoded PNG for JPEG inputs, as in generation.rs).
fn image_file(file: &str) -> std::path::PathBuf {
    Case::image_path(&file.replace(".jpg", ".decoded.png"))
}

/// A fixture case as a request, its images given as `how` says.
fn case_request(case: &Case, how: fn(std::path::PathBuf) -> ImageInput) -> Request {
    let request = case.images.iter().fold(Request::raw(case.prompt.clone()), |r, f| r.image(how(image_file(f))));
    request.max_new_tokens(case.tensor("greedy_ids").shape()[0])
}

/// The fixture's greedy ids, up to and including the first of the model's stop tokens (the
/// pipeline stops there; generation.rs checks the whole run without stop tokens).
fn expected_ids(case: &Case, stops: &[u32]) -> Vec<u32> {
    let mut want: Vec<u32> = case.tensor("greedy_ids").i64().iter().map(|&i| i as u32).collect();
    if let Some(i) = want.iter().position(|id| stops.contains(id)) {
        want.truncate(i + 1);
    }
    want
}

fn by_path(p: std::path::PathBuf) -> ImageInput {
    ImageInput::Path(p)
}
fn by_bytes(p: std::path::PathBuf) -> ImageInput {
    ImageInput::Bytes(std::fs::read(p).expect("image bytes"))
}
fn by_image(p: std::path::PathBuf) -> ImageInput {
    ImageInput::Image(load_image(&p, u64::MAX).expect("decoded image"))
}

#[test]
fn device_string_route_reproduces_the_fixtures_with_every_image_input() {
    for (name, how) in [
        ("text_only", by_path as fn(_) -> _),
        ("coffee_portrait", by_path),
        ("two_images", by_bytes),
        ("camera_gray_jpeg", by_image),
    ] {
        let case = Case::load(name);
        let p = pipeline(&case.model);
        let out = p.generate(&case_request(&case, how)).expect("generate");
        assert_eq!(out.token_ids, expected_ids(&case, &p.stop_token_ids()), "case {name}");
        if out.finish_reason == FinishReason::Length {
            assert_eq!(out.text, case.json["greedy_text"].as_str().expect("greedy_text"), "case {name}");
        }
    }
}

#[test]
fn paths_bytes_and_decoded_images_give_the_same_prompt() {
    let case = Case::load("two_images");
    let p = pipeline(&case.model);
    let prepared: Vec<_> = [by_path as fn(_) -> _, by_bytes, by_image]
        .into_iter()
        .map(|how| p.prepare(&case_request(&case, how)).expect("prepare"))
        .collect();
    for (prompt, params) in &prepared[1..] {
        assert_eq!(prompt.input_ids, prepared[0].0.input_ids);
        assert_eq!(prompt.images.len(), 2);
        for (a, b) in prompt.images.iter().zip(&prepared[0].0.images) {
            assert_eq!(a.pixel_values, b.pixel_values);
        }
        assert_eq!(params, &prepared[0].1);
    }
    // A user message gets its image tags, and the model's stop tokens are added.
    let (prompt, params) = p.prepare(&Request::new("Compare.").image_path(image_file("chelsea.png"))).expect("prepare");
    assert_eq!(prompt.num_image_tokens().len(), 1);
    assert!(p.stop_token_ids().iter().all(|id| params.stop_token_ids.contains(id)));
}

fn assert_same(a: &GenerationOutput, b: &GenerationOutput, what: &str) {
    assert_eq!(a.token_ids, b.token_ids, "{what}");
    assert_eq!(a.text, b.text, "{what}");
    assert_eq!(a.finish_reason, b.finish_reason, "{what}");
    assert_eq!(a.prompt_tokens, b.prompt_tokens, "{what}");
}

#[test]
fn streaming_iterator_equals_blocking_output() {
    for name in ["text_only", "coffee_portrait"] {
        let case = Case::load(name);
        let p = pipeline(&case.model);
        let request = case_request(&case, by_path);
        let blocking = p.generate(&request).expect("generate");
        let mut stream = p.stream(&request).expect("stream");
        let mut ids = Vec::new();
        let mut text = String::new();
        for token in &mut stream {
            let token = token.expect("token");
            assert_eq!(token.sequence, 0);
            ids.push(token.token_id);
            text.push_str(&token.text);
        }
        assert_eq!(ids, blocking.token_ids, "case {name}: one item per token");
        assert_eq!(text, blocking.text, "case {name}: streamed text");
        assert_same(&stream.into_output().expect("output"), &blocking, name);
    }
}

#[test]
fn batch_equals_single_requests() {
    let p = pipeline("phi35v-tiny");
    let chelsea = image_file("chelsea.png");
    let requests = [
        Request::new("What animal is this?").image_path(&chelsea).max_new_tokens(6),
        Request::new("Hello there").max_new_tokens(4),
        Request::chat(vec![burn_phi3v::Message::new("user", "<|image_1|>\n<|image_2|>\nCompare.")])
            .image_path(&chelsea)
            .image_path(image_file("rocket.png"))
            .max_new_tokens(5),
    ];
    let batch = p.batch(&requests).expect("batch");
    assert_eq!(batch.len(), requests.len());
    for (i, r) in requests.iter().enumerate() {
        assert_same(&batch[i], &p.generate(r).expect("single"), &format!("row {i}"));
    }
    // The batch streams too, every token tagged with its row.
    let mut per_row = vec![Vec::new(); requests.len()];
    let prepared: Vec<_> = requests.iter().map(|r| p.prepare(r).expect("prepare")).collect();
    let prompts: Vec<_> = prepared.iter().map(|(pr, _)| pr).collect();
    let params: Vec<_> = prepared.iter().map(|(_, pa)| pa.clone()).collect();
    for t in p.stream_processed(&prompts, &params).expect("stream") {
        let t = t.expect("token");
        per_row[t.sequence].push(t.token_id);
    }
    for (i, ids) in per_row.iter().enumerate() {
        assert_eq!(ids, &batch[i].token_ids, "streamed row {i}");
    }
}

#[test]
fn backend_type_route_equals_device_string_route() {
    let request = Request::new("Describe it.").image_path(image_file("rocket.png")).max_new_tokens(5);
    let by_string = pipeline("phi3v-tiny");
    let typed = Pipeline::from_pretrained_on::<Cpu>(model_dir("phi3v-tiny"), &cpu::device(), &LoadOptions::default())
        .expect("typed load");
    assert_same(&typed.generate(&request).expect("typed"), &by_string.generate(&request).expect("string"), "typed");
    assert_eq!(typed.dtype(), DType::F32);
    assert_eq!(by_string.device().spec, "cpu");
    // The typed model underneath, for its steps.
    let m: &LoadedModel<Cpu> = by_string.loaded::<Cpu>().expect("cpu model");
    assert_eq!(m.model.dtype(), DType::F32);
    // num_crops from the options reaches the image processor.
    let two = Pipeline::from_pretrained(model_dir("phi3v-tiny"), "cpu", &LoadOptions::default().with_num_crops(2))
        .expect("load");
    assert_eq!(two.processor().image_config.num_crops, 2);
    let (p4, _) = by_string.prepare(&request).expect("prepare");
    let (p2, _) = two.prepare(&request).expect("prepare");
    assert!(p2.input_ids.len() < p4.input_ids.len(), "fewer crops, fewer image tokens");
}

#[test]
fn a_stream_can_be_cancelled() {
    let p = pipeline("phi3v-tiny");
    let mut stream = p.stream(&Request::new("Tell me a story.").max_new_tokens(50)).expect("stream");
    let first: Vec<_> = stream.by_ref().take(3).map(|t| t.expect("token").token_id).collect();
    let out = stream.cancel().expect("cancel").remove(0);
    assert_eq!(out.token_ids, first);
    assert_eq!(out.finish_reason, FinishReason::Cancelled);
}

#[test]
fn errors_are_typed() {
    let dir = model_dir("phi3v-tiny");
    let load = |device: &str, options: &LoadOptions| Pipeline::from_pretrained(&dir, device, options).unwrap_err();
    assert!(matches!(load("tpu:0", &LoadOptions::default()), Phi3vError::Device(DeviceError::Unknown { .. })));
    assert!(matches!(
        load("cpu", &LoadOptions::default().with_dtype(DType::BF16)),
        Phi3vError::Device(DeviceError::UnsupportedDtype { .. })
    ));
    // Not compiled in, or compiled in but absent: a workspace build compiles CUDA into
    // burn-phi3v whatever this crate's features (phi3v-backend-cuda asks for it).
    let cuda_compiled = burn_phi3v::device::compiled_backends().contains(&"cuda");
    match load("cuda:99", &LoadOptions::default()) {
        Phi3vError::Device(DeviceError::NotCompiled { feature: "cuda", .. }) => assert!(!cuda_compiled),
        Phi3vError::Device(DeviceError::NotPresent { .. }) => assert!(cuda_compiled),
        e => panic!("cuda:99: {e}"),
    }
    assert!(matches!(Pipeline::load(&dir, "cpu", Some("f8")).unwrap_err(), Phi3vError::Device(DeviceError::UnknownDtype(_))));
    assert!(matches!(
        Pipeline::from_pretrained(dir.join("missing"), "cpu", &LoadOptions::default()).unwrap_err(),
        Phi3vError::Io { .. }
    ));

    let p = pipeline("phi3v-tiny");
    let missing = Request::new("What is it?").image_path("no/such/image.png");
    match p.generate(&missing) {
        Err(Phi3vError::Image(ImageError::Io { path, .. })) => assert!(path.ends_with("image.png")),
        other => panic!("expected a missing-file error, got {other:?}"),
    }
    let garbage = Request::new("What is it?").image_bytes(b"not an image at all".to_vec());
    assert!(matches!(p.generate(&garbage), Err(Phi3vError::Image(ImageError::Decode { .. }))));
    assert!(matches!(p.stream(&garbage), Err(Phi3vError::Image(ImageError::Decode { .. }))));
    let untagged = Request::raw("<|user|>\nNo tag here<|end|>\n<|assistant|>\n").image_path(image_file("rocket.png"));
    assert!(matches!(p.generate(&untagged), Err(Phi3vError::ImageTags(_))));
    assert!(matches!(p.generate(&Request::new("Hi").max_new_tokens(0)), Err(Phi3vError::InvalidParameter { .. })));
}

/// A pipeline can be shared between threads (e.g. behind an `Arc` in a server).
#[test]
fn pipeline_is_send_and_sync() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Pipeline>();
    let p = std::sync::Arc::new(pipeline("phi3v-tiny"));
    let request = Request::new("Hi").max_new_tokens(3);
    let here = p.generate(&request).expect("here");
    let there = std::thread::spawn({
        let (p, request) = (p.clone(), request.clone());
        move || p.generate(&request).expect("there")
    })
    .join()
    .expect("thread");
    assert_same(&here, &there, "across threads");
}
