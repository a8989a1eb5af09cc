//! The committed sample set: reproducible, readable, with the expected items; plus the readers'
//! handling of filters, malformed rows and the JSONL form.

mod common;

use std::collections::BTreeMap;

use phi3v_accuracy::dataset::ItemImage;
use phi3v_accuracy::dataset::{self, Filter};
use phi3v_accuracy::error::Error;
use phi3v_accuracy::parse::Gold;
use phi3v_accuracy::sample::{ParquetRow, sample_items, write_mmmu_parquet, write_sample_set};

fn validation() -> Filter {
    Filter {
        split: Some("validation".into()),
        ..Filter::default()
    }
}

#[test]
fn committed_files_are_reproducible() {
    let dir = common::temp_dir("regen");
    let files = write_sample_set(&dir).unwrap();
    assert_eq!(files.len(), 12);
    let mut total = 0;
    for f in files {
        let rel = f.strip_prefix(&dir).unwrap();
        let committed = std::fs::read(common::sample_dir().join(rel)).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (regenerate with the write_mmmu_sample example)",
                rel.display()
            )
        });
        let fresh = std::fs::read(&f).unwrap();
        total += committed.len();
        assert!(
            committed == fresh,
            "{} differs from a fresh generation",
            rel.display()
        );
    }
    assert!(total < 200_000, "sample set too large: {total} bytes");
}

#[test]
fn validation_split_reads_back() {
    let ds = dataset::open(&common::sample_dir(), &validation()).unwrap();
    assert!(ds.skipped.is_empty(), "{:?}", ds.skipped);
    assert_eq!(ds.items.len(), 30);
    assert_eq!(ds.files.len(), 5);
    let counts = dataset::subject_counts(&ds.items);
    assert_eq!(
        counts,
        [
            ("Art".to_string(), 6),
            ("Computer_Science".to_string(), 6),
            ("Geography".to_string(), 6),
            ("Math".to_string(), 6),
            ("Physics".to_string(), 6)
        ]
    );
    let mc = ds.items.iter().filter(|i| i.is_multiple_choice()).count();
    assert_eq!((mc, 30 - mc), (18, 12));

    // Multi-image rows: every image present, in k order, all decodable.
    let multi: BTreeMap<&str, usize> = ds
        .items
        .iter()
        .filter(|i| i.images.len() > 1)
        .map(|i| (i.id.as_str(), i.images.len()))
        .collect();
    assert_eq!(
        multi,
        BTreeMap::from([
            ("validation_Art_2", 2),
            ("validation_Art_5", 3),
            ("validation_Computer_Science_4", 4),
            ("validation_Geography_4", 3),
            ("validation_Math_6", 2),
            ("validation_Physics_2", 2),
        ])
    );
    for it in &ds.items {
        let ks: Vec<u32> = it.images.iter().map(|i| i.k).collect();
        assert_eq!(ks, (1..=ks.len() as u32).collect::<Vec<_>>(), "{}", it.id);
        for im in &it.images {
            let img = image::load_from_memory(&im.bytes).unwrap();
            assert!(
                (64..=300).contains(&img.width()) && (25..=200).contains(&img.height()),
                "{} {}x{}",
                it.id,
                img.width(),
                img.height()
            );
        }
        assert_eq!(
            it.referenced_images().len(),
            it.images.len(),
            "{}: every image is referenced",
            it.id
        );
    }
    // Tags only inside the options.
    let art5 = ds
        .items
        .iter()
        .find(|i| i.id == "validation_Art_5")
        .unwrap();
    assert!(!art5.question.contains("<image"));
    assert_eq!(art5.options, ["<image 1>", "<image 2>", "<image 3>"]);

    // Answers: as in answers.json; the list-valued one parsed into a list.
    let answers: BTreeMap<String, String> = serde_json::from_str(
        &std::fs::read_to_string(common::sample_dir().join("answers.json")).unwrap(),
    )
    .unwrap();
    for it in &ds.items {
        let stored = &answers[&it.id];
        match &it.answer {
            Gold::One(a) => assert_eq!(a, stored),
            Gold::Many(v) => {
                assert_eq!(it.id, "validation_Geography_3");
                assert_eq!(v, &["blue", "navy"]);
                assert_eq!(stored, "['blue', 'navy']");
            }
        }
    }
    let art4 = ds
        .items
        .iter()
        .find(|i| i.id == "validation_Art_4")
        .unwrap();
    assert_eq!(art4.options[0], "It's a single square on a plain ground");
    assert_eq!(art4.options[1], "Two \"overlapping\" circles");
    // The generator's item list agrees with what was read.
    let generated: Vec<String> = sample_items()
        .unwrap()
        .into_iter()
        .filter(|s| s.split == "validation")
        .filter_map(|s| s.row.id)
        .collect();
    assert_eq!(
        generated,
        ds.items.iter().map(|i| i.id.clone()).collect::<Vec<_>>()
    );
}

#[test]
fn filters() {
    let dir = common::sample_dir();
    let ds = dataset::open(
        &dir,
        &Filter {
            split: Some("dev".into()),
            ..Filter::default()
        },
    )
    .unwrap();
    assert_eq!(
        ds.items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        [
            "dev_Art_1",
            "dev_Computer_Science_1",
            "dev_Geography_1",
            "dev_Math_1",
            "dev_Physics_1"
        ]
    );
    // Short and long subject names; evaluation order regardless of the order given.
    let f = Filter {
        subjects: Some(vec!["phys".into(), "Art".into()]),
        ..validation()
    };
    let ds = dataset::open(&dir, &f).unwrap();
    assert_eq!(ds.items.len(), 12);
    assert_eq!(ds.items[0].subject, "Art");
    assert_eq!(ds.items[11].subject, "Physics");
    let f = Filter {
        limit_per_subject: Some(2),
        limit: Some(7),
        ..validation()
    };
    let ids: Vec<String> = dataset::open(&dir, &f)
        .unwrap()
        .items
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(
        ids,
        [
            "validation_Art_1",
            "validation_Art_2",
            "validation_Computer_Science_1",
            "validation_Computer_Science_2",
            "validation_Geography_1",
            "validation_Geography_2",
            "validation_Math_1"
        ]
    );
    // A single file works too; no split filter keeps everything in it.
    let one = dataset::open(
        &dir.join("Math/validation-00000-of-00001.parquet"),
        &Filter::default(),
    )
    .unwrap();
    assert_eq!(one.items.len(), 6);
    assert!(matches!(
        dataset::resolve_subjects(&["chemistry".into()], false),
        Err(Error::UnknownSubject { .. })
    ));
    assert_eq!(
        dataset::resolve_subjects(&["cs".into()], false).unwrap(),
        ["Computer_Science"]
    );
    assert!(matches!(
        dataset::open(&common::temp_dir("empty"), &Filter::default()),
        Err(Error::NoFiles { .. })
    ));
}

fn png() -> Vec<u8> {
    let mut out = Vec::new();
    image::RgbImage::from_pixel(8, 6, image::Rgb([1, 2, 3]))
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn row(id: &str, question: &str, options: &str, answer: &str, ks: &[u32]) -> ParquetRow {
    ParquetRow {
        id: Some(id.into()),
        question: Some(question.into()),
        options: Some(options.into()),
        answer: Some(answer.into()),
        question_type: Some(
            if options == "[]" {
                "open"
            } else {
                "multiple-choice"
            }
            .into(),
        ),
        images: ks
            .iter()
            .map(|&k| ItemImage {
                k,
                bytes: png(),
                path: Some(format!("{k}.png")),
            })
            .collect(),
        ..ParquetRow::default()
    }
}

#[test]
fn malformed_rows_are_reported_and_skipped() {
    let dir = common::temp_dir("malformed");
    let sub = dir.join("Chemistry");
    std::fs::create_dir_all(&sub).unwrap();
    let mut not_an_image = row(
        "validation_Chemistry_5",
        "<image 1>?",
        "['a', 'b']",
        "A",
        &[],
    );
    not_an_image.images.push(ItemImage {
        k: 1,
        bytes: b"definitely not an image".to_vec(),
        path: None,
    });
    let rows = vec![
        row(
            "validation_Chemistry_1",
            "Good <image 1> and <image 2>?",
            "['x', 'y']",
            "B",
            &[1, 2],
        ),
        row(
            "validation_Chemistry_2",
            "Bad options <image 1>?",
            "['x', 'y'",
            "A",
            &[1],
        ),
        row(
            "validation_Chemistry_3",
            "Missing <image 2>?",
            "['x']",
            "A",
            &[1],
        ),
        row("validation_Chemistry_4", "No options?", "[]", "A", &[]),
        not_an_image,
        ParquetRow {
            id: None,
            ..row("x", "q", "[]", "1", &[])
        },
        row(
            "validation_Chemistry_7",
            "Unreferenced broken image is fine",
            "[]",
            "7",
            &[],
        ),
        row("validation_Chemistry_8", "Empty answer", "[]", "", &[]),
    ];
    let mut rows = rows;
    rows[3].question_type = Some("multiple-choice".into());
    rows[6].images.push(ItemImage {
        k: 3,
        bytes: vec![0, 1, 2],
        path: None,
    });
    write_mmmu_parquet(&sub.join("validation-00000-of-00001.parquet"), &rows).unwrap();

    let ds = dataset::open(&dir, &validation()).unwrap();
    let ids: Vec<&str> = ds.items.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["validation_Chemistry_1", "validation_Chemistry_7"]);
    assert_eq!(ds.items[0].images.len(), 2);
    assert_eq!(ds.items[0].images[1].path.as_deref(), Some("2.png"));
    let reasons: Vec<(Option<&str>, &Error)> = ds
        .skipped
        .iter()
        .map(|s| (s.id.as_deref(), &s.error))
        .collect();
    assert_eq!(reasons.len(), 6, "{reasons:?}");
    assert!(matches!(
        reasons[0],
        (Some("validation_Chemistry_2"), Error::BadOptions { .. })
    ));
    assert!(matches!(
        reasons[1],
        (
            Some("validation_Chemistry_3"),
            Error::MissingImage { k: 2, .. }
        )
    ));
    assert!(matches!(
        reasons[2],
        (Some("validation_Chemistry_4"), Error::NoOptions { .. })
    ));
    assert!(matches!(
        reasons[3],
        (Some("validation_Chemistry_5"), Error::BadImage { k: 1, .. })
    ));
    assert!(matches!(reasons[4], (None, Error::MissingId { .. })));
    assert!(matches!(
        reasons[5],
        (Some("validation_Chemistry_8"), Error::EmptyAnswer { .. })
    ));
    // Messages name the item and the column.
    assert!(
        ds.skipped[1]
            .error
            .to_string()
            .contains("validation_Chemistry_3: `<image 2>` is referenced but image_2 is missing")
    );
    assert!(
        ds.skipped[0]
            .location
            .ends_with("validation-00000-of-00001.parquet:1")
    );

    // A file without a required column is an error for that file.
    let bad = dir.join("no_answer.parquet");
    std::fs::write(&bad, b"not parquet at all").unwrap();
    assert!(matches!(
        dataset::open(&bad, &Filter::default()),
        Err(Error::Parquet { .. })
    ));
}

#[test]
fn jsonl_sets() {
    let dir = common::temp_dir("jsonl");
    std::fs::create_dir_all(dir.join("img")).unwrap();
    std::fs::write(dir.join("img/a.png"), png()).unwrap();
    std::fs::write(dir.join("img/b.png"), png()).unwrap();
    let lines = [
        r#"{"id": "validation_Art_1", "question": "Which? <image 1>", "options": ["x", "y"], "answer": "B", "question_type": "multiple-choice", "images": {"1": "img/a.png"}}"#,
        r#"{"id": "validation_Art_2", "question": "<image 1> <image 2> sum?", "options": "[]", "answer": ["3", "three"], "question_type": "open", "images": ["img/a.png", "img/b.png"]}"#,
        "",
        r#"{"id": "custom_1", "subject": "Optics", "question": "Lens? <image 2>", "options": "['convex', 'concave']", "answer": "A", "question_type": "multiple-choice", "images": {"2": "img/b.png"}}"#,
        r#"{"id": "validation_Art_3", "question": "<image 1>", "answer": "A", "question_type": "open", "images": {"1": "img/missing.png"}}"#,
        r#"{"id": "validation_Art_4", "question": 5}"#,
    ];
    let path = dir.join("set.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let ds = dataset::open(&path, &Filter::default()).unwrap();
    let ids: Vec<&str> = ds.items.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["validation_Art_1", "validation_Art_2", "custom_1"]);
    assert_eq!(
        ds.items[1].answer,
        Gold::Many(vec!["3".into(), "three".into()])
    );
    assert_eq!(ds.items[1].images.len(), 2);
    assert_eq!(ds.items[2].subject, "Optics");
    assert_eq!(ds.items[2].options, ["convex", "concave"]);
    assert_eq!(ds.skipped.len(), 2);
    assert!(matches!(
        ds.skipped[0].error,
        Error::MissingImage { k: 1, .. }
    ));
    assert!(matches!(
        ds.skipped[1].error,
        Error::BadJsonLine { line: 6, .. }
    ));
    let only = Filter {
        subjects: Some(vec!["Optics".into()]),
        ..Filter::default()
    };
    assert_eq!(dataset::open(&path, &only).unwrap().items.len(), 1);
}
