//! A small MMMU-format sample set drawn by code, and a writer for MMMU's parquet schema.
//!
//! [`write_sample_set`] writes 30 validation items over five subjects (Art, Computer_Science,
//! Geography, Math, Physics; six each, multiple-choice and open, several with two to four images,
//! some with image tags only inside the options, one with a list-valued gold answer) and one dev
//! item per subject, as `{Subject}/{split}-00000-of-00001.parquet` plus `answers.json` (id → gold).
//! Images are flat-colour shapes, grids and bar charts (PNG, 64×48 to 300×200) whose answers are
//! known by construction. The output is byte-for-byte deterministic for a given `parquet` and
//! `image` crate version.
//!
//! [`write_mmmu_parquet`] writes any rows, including malformed ones, in the schema of the HF files:
//! optional UTF-8 strings for the text columns and `image_k: struct<bytes: binary, path: string>`,
//! with the `huggingface` key-value metadata that lets `datasets` read the image columns as
//! `Image` features.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::{Rgb, RgbImage};
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use crate::dataset::ItemImage;
use crate::error::{Error, Result};
use crate::pyliteral::repr_str_list;

/// One row in MMMU's parquet schema. `None` writes a null.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParquetRow {
    pub id: Option<String>,
    pub question: Option<String>,
    /// The options column as stored: a Python list literal such as `"['a', 'b']"`.
    pub options: Option<String>,
    pub explanation: Option<String>,
    /// `image_k` for k = 1…7; others are ignored, absent ones are null.
    pub images: Vec<ItemImage>,
    pub img_type: Option<String>,
    pub answer: Option<String>,
    pub topic_difficulty: Option<String>,
    pub question_type: Option<String>,
    pub subfield: Option<String>,
}

const TEXT_BEFORE: [&str; 4] = ["id", "question", "options", "explanation"];
const TEXT_AFTER: [&str; 5] = [
    "img_type",
    "answer",
    "topic_difficulty",
    "question_type",
    "subfield",
];

fn schema_text() -> String {
    let mut s = String::from("message schema {\n");
    for c in TEXT_BEFORE {
        s += &format!("  optional binary {c} (STRING);\n");
    }
    for k in 1..=7 {
        s += &format!(
            "  optional group image_{k} {{\n    optional binary bytes;\n    optional binary path (STRING);\n  }}\n"
        );
    }
    for c in TEXT_AFTER {
        s += &format!("  optional binary {c} (STRING);\n");
    }
    s + "}\n"
}

fn hf_metadata() -> String {
    let mut features = serde_json::Map::new();
    let string = serde_json::json!({"dtype": "string", "_type": "Value"});
    for c in TEXT_BEFORE {
        features.insert(c.into(), string.clone());
    }
    for k in 1..=7 {
        features.insert(format!("image_{k}"), serde_json::json!({"_type": "Image"}));
    }
    for c in TEXT_AFTER {
        features.insert(c.into(), string.clone());
    }
    serde_json::json!({"info": {"features": features}}).to_string()
}

type TextGetter = dyn Fn(&ParquetRow) -> Option<&String>;

/// Writes rows as one snappy-compressed row group in MMMU's schema.
pub fn write_mmmu_parquet(path: &Path, rows: &[ParquetRow]) -> Result<()> {
    let pq = |e| Error::parquet(path, e);
    let schema = Arc::new(parse_message_type(&schema_text()).map_err(pq)?);
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_key_value_metadata(Some(vec![KeyValue::new(
            "huggingface".into(),
            hf_metadata(),
        )]))
        .build();
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut writer = SerializedFileWriter::new(file, schema, Arc::new(props)).map_err(pq)?;
    let mut rg = writer.next_row_group().map_err(pq)?;

    // Leaf columns in schema order: (values, definition levels).
    let text_col = |get: &TextGetter| {
        let mut values = Vec::new();
        let mut defs = Vec::new();
        for r in rows {
            match get(r) {
                Some(s) => {
                    values.push(ByteArray::from(s.as_bytes().to_vec()));
                    defs.push(1i16);
                }
                None => defs.push(0),
            }
        }
        (values, defs)
    };
    let mut columns: Vec<(Vec<ByteArray>, Vec<i16>)> = Vec::new();
    let text_before: [&TextGetter; 4] = [
        &|r| r.id.as_ref(),
        &|r| r.question.as_ref(),
        &|r| r.options.as_ref(),
        &|r| r.explanation.as_ref(),
    ];
    for get in text_before {
        columns.push(text_col(get));
    }
    for k in 1..=7u32 {
        let (mut bv, mut bd, mut pv, mut pd) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in rows {
            match r.images.iter().find(|im| im.k == k) {
                None => {
                    bd.push(0i16);
                    pd.push(0i16);
                }
                Some(im) => {
                    bv.push(ByteArray::from(im.bytes.clone()));
                    bd.push(2);
                    match &im.path {
                        Some(p) => {
                            pv.push(ByteArray::from(p.as_bytes().to_vec()));
                            pd.push(2);
                        }
                        None => pd.push(1),
                    }
                }
            }
        }
        columns.push((bv, bd));
        columns.push((pv, pd));
    }
    let text_after: [&TextGetter; 5] = [
        &|r| r.img_type.as_ref(),
        &|r| r.answer.as_ref(),
        &|r| r.topic_difficulty.as_ref(),
        &|r| r.question_type.as_ref(),
        &|r| r.subfield.as_ref(),
    ];
    for get in text_after {
        columns.push(text_col(get));
    }

    let mut it = columns.iter();
    while let Some(mut col) = rg.next_column().map_err(pq)? {
        let (values, defs) = it.next().expect("one data vector per leaf column");
        col.typed::<ByteArrayType>()
            .write_batch(values, Some(defs), None)
            .map_err(pq)?;
        col.close().map_err(pq)?;
    }
    rg.close().map_err(pq)?;
    writer.close().map_err(pq)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Drawing

type Color = [u8; 3];
const WHITE: Color = [255, 255, 255];
const BLACK: Color = [0, 0, 0];
const RED: Color = [220, 30, 30];
const GREEN: Color = [30, 170, 60];
const BLUE: Color = [30, 70, 220];
const YELLOW: Color = [240, 210, 20];
const ORANGE: Color = [245, 140, 20];
const PURPLE: Color = [140, 40, 170];
const NAVY: Color = [20, 30, 110];
const SAND: Color = [230, 210, 160];
const GREY: Color = [150, 150, 150];
const CYAN: Color = [40, 190, 200];

struct Canvas(RgbImage);

impl Canvas {
    fn new(w: u32, h: u32, bg: Color) -> Self {
        Canvas(RgbImage::from_pixel(w, h, Rgb(bg)))
    }
    fn put(&mut self, x: i32, y: i32, c: Color) {
        if x >= 0 && y >= 0 && (x as u32) < self.0.width() && (y as u32) < self.0.height() {
            self.0.put_pixel(x as u32, y as u32, Rgb(c));
        }
    }
    fn rect(&mut self, x0: i32, y0: i32, x1: i32, y1: i32, c: Color) {
        for y in y0..y1 {
            for x in x0..x1 {
                self.put(x, y, c);
            }
        }
    }
    fn circle(&mut self, cx: i32, cy: i32, r: i32, c: Color) {
        for y in cy - r..=cy + r {
            for x in cx - r..=cx + r {
                if (x - cx) * (x - cx) + (y - cy) * (y - cy) <= r * r {
                    self.put(x, y, c);
                }
            }
        }
    }
    fn triangle(&mut self, p: [(i32, i32); 3], c: Color) {
        let edge = |a: (i32, i32), b: (i32, i32), x: i32, y: i32| {
            (b.0 - a.0) * (y - a.1) - (b.1 - a.1) * (x - a.0)
        };
        let (xmin, xmax) = (
            p.iter().map(|q| q.0).min().unwrap_or(0),
            p.iter().map(|q| q.0).max().unwrap_or(0),
        );
        let (ymin, ymax) = (
            p.iter().map(|q| q.1).min().unwrap_or(0),
            p.iter().map(|q| q.1).max().unwrap_or(0),
        );
        for y in ymin..=ymax {
            for x in xmin..=xmax {
                let (e0, e1, e2) = (
                    edge(p[0], p[1], x, y),
                    edge(p[1], p[2], x, y),
                    edge(p[2], p[0], x, y),
                );
                if (e0 >= 0 && e1 >= 0 && e2 >= 0) || (e0 <= 0 && e1 <= 0 && e2 <= 0) {
                    self.put(x, y, c);
                }
            }
        }
    }
    fn line(&mut self, (x0, y0): (i32, i32), (x1, y1): (i32, i32), c: Color) {
        let n = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
        for i in 0..=n {
            self.put(x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n, c);
        }
    }
    fn png(&self, what: &str) -> Result<Vec<u8>> {
        use image::ImageEncoder;
        use image::codecs::png::{CompressionType, FilterType, PngEncoder};
        let mut out = Vec::new();
        PngEncoder::new_with_quality(&mut out, CompressionType::Best, FilterType::Adaptive)
            .write_image(
                self.0.as_raw(),
                self.0.width(),
                self.0.height(),
                image::ExtendedColorType::Rgb8,
            )
            .map_err(|source| Error::Encode {
                what: what.into(),
                source,
            })?;
        Ok(out)
    }
}

/// A bar chart on a light grid: bar heights in grid units (unit = 10 px).
fn bar_chart(heights: &[i32], colors: &[Color]) -> Canvas {
    let (w, h) = (40 + 30 * heights.len() as i32, 120);
    let mut c = Canvas::new(w as u32, h as u32, WHITE);
    for y in (10..=110).step_by(10) {
        c.line((10, y), (w - 10, y), [225, 225, 225]);
    }
    for (i, &hh) in heights.iter().enumerate() {
        let x = 25 + 30 * i as i32;
        c.rect(x, 110 - 10 * hh, x + 18, 110, colors[i % colors.len()]);
    }
    c.line((10, 110), (w - 10, 110), BLACK);
    c
}

/// A `cols`×`rows` grid of cells coloured by `cells` (row-major).
fn grid(cols: i32, rows: i32, cell: i32, cells: &[Color]) -> Canvas {
    let mut c = Canvas::new((cols * cell + 1) as u32, (rows * cell + 1) as u32, BLACK);
    for r in 0..rows {
        for q in 0..cols {
            let col = cells[(r * cols + q) as usize % cells.len()];
            c.rect(
                q * cell + 1,
                r * cell + 1,
                (q + 1) * cell,
                (r + 1) * cell,
                col,
            );
        }
    }
    c
}

/// A graph of `n` nodes on a circle with the given edges.
fn graph(n: i32, edges: &[(i32, i32)], node: Color) -> Canvas {
    let (w, h) = (200, 160);
    let mut c = Canvas::new(w, h, WHITE);
    let pos: Vec<(i32, i32)> = (0..n)
        .map(|i| {
            let a = std::f64::consts::TAU * f64::from(i) / f64::from(n);
            (
                100 + (60.0 * a.cos()).round() as i32,
                80 + (60.0 * a.sin()).round() as i32,
            )
        })
        .collect();
    for &(a, b) in edges {
        c.line(pos[a as usize], pos[b as usize], BLACK);
    }
    for &p in &pos {
        c.circle(p.0, p.1, 9, node);
    }
    c
}

// ---------------------------------------------------------------------------------------------
// The sample items

/// One generated item: its row and the gold answer as the HF column stores it.
#[derive(Debug, Clone)]
pub struct SampleItem {
    pub split: &'static str,
    pub subject: &'static str,
    pub row: ParquetRow,
}

struct Spec<'a> {
    question: &'a str,
    options: &'a [&'a str],
    answer: &'a str,
    images: Vec<Canvas>,
    subfield: &'a str,
    difficulty: &'a str,
    img_type: &'a str,
}

fn mc<'a>(
    question: &'a str,
    options: &'a [&'a str],
    answer: &'a str,
    images: Vec<Canvas>,
) -> Spec<'a> {
    Spec {
        question,
        options,
        answer,
        images,
        subfield: "Shapes",
        difficulty: "Easy",
        img_type: "['Diagrams']",
    }
}

fn open<'a>(question: &'a str, answer: &'a str, images: Vec<Canvas>) -> Spec<'a> {
    Spec {
        question,
        options: &[],
        answer,
        images,
        subfield: "Counting",
        difficulty: "Medium",
        img_type: "['Diagrams']",
    }
}

fn shapes(w: u32, h: u32, bg: Color, draw: impl FnOnce(&mut Canvas)) -> Canvas {
    let mut c = Canvas::new(w, h, bg);
    draw(&mut c);
    c
}

fn subject_specs(subject: &str) -> Vec<Spec<'static>> {
    match subject {
        "Art" => vec![
            mc(
                "<image 1> What colour is the large circle in the centre of this composition?",
                &["Red", "Green", "Blue", "Yellow"],
                "C",
                vec![shapes(160, 120, SAND, |c| {
                    c.circle(80, 60, 40, BLUE);
                    c.rect(5, 5, 25, 25, RED);
                    c.rect(135, 95, 155, 115, YELLOW);
                })],
            ),
            mc(
                "Which of the two compositions uses only cool colours (blues, greens, purples)? <image 1> <image 2>",
                &["<image 1>", "<image 2>"],
                "B",
                vec![
                    shapes(120, 90, WHITE, |c| {
                        c.circle(40, 45, 25, RED);
                        c.rect(70, 20, 110, 70, ORANGE);
                    }),
                    shapes(120, 90, WHITE, |c| {
                        c.circle(40, 45, 25, BLUE);
                        c.rect(70, 20, 110, 70, GREEN);
                        c.triangle([(60, 85), (90, 75), (75, 60)], PURPLE);
                    }),
                ],
            ),
            open(
                "How many triangles appear in <image 1>?",
                "3",
                vec![shapes(200, 100, WHITE, |c| {
                    c.triangle([(10, 90), (50, 90), (30, 20)], RED);
                    c.triangle([(80, 90), (120, 90), (100, 30)], GREEN);
                    c.triangle([(150, 90), (190, 90), (170, 10)], BLUE);
                    c.circle(100, 15, 8, YELLOW);
                })],
            ),
            mc(
                "Which statement best describes <image 1>?",
                &[
                    "It's a single square on a plain ground",
                    "Two \"overlapping\" circles",
                    "A field of stripes",
                    "An empty canvas",
                ],
                "B",
                vec![shapes(128, 96, WHITE, |c| {
                    c.circle(50, 48, 30, RED);
                    c.circle(78, 48, 30, BLUE);
                })],
            ),
            mc(
                "Which image shows a red triangle?",
                &["<image 1>", "<image 2>", "<image 3>"],
                "C",
                vec![
                    shapes(64, 48, WHITE, |c| {
                        c.triangle([(8, 44), (56, 44), (32, 4)], BLUE)
                    }),
                    shapes(64, 48, WHITE, |c| c.rect(12, 8, 52, 40, RED)),
                    shapes(64, 48, WHITE, |c| {
                        c.triangle([(8, 44), (56, 44), (32, 4)], RED)
                    }),
                ],
            ),
            mc(
                "In <image 1>, which colour covers the largest area?",
                &["Red", "Green", "Blue", "Yellow", "Purple"],
                "E",
                vec![grid(
                    5,
                    4,
                    20,
                    &[
                        PURPLE, PURPLE, RED, PURPLE, GREEN, PURPLE, BLUE, PURPLE, YELLOW, PURPLE,
                    ],
                )],
            ),
        ],
        "Computer_Science" => vec![
            open(
                "How many nodes does the graph in <image 1> have?",
                "5",
                vec![graph(5, &[(0, 1), (1, 2), (2, 3), (3, 4), (4, 0)], ORANGE)],
            ),
            mc(
                "How many edges does the graph in <image 1> have?",
                &["3", "4", "5", "6"],
                "B",
                vec![graph(4, &[(0, 1), (1, 2), (2, 3), (0, 2)], CYAN)],
            ),
            mc(
                "<image 1> shows a 4x4 bitmap. How many cells are black?",
                &["2", "4", "6", "8"],
                "C",
                vec![grid(
                    4,
                    4,
                    16,
                    &[
                        BLACK, WHITE, WHITE, BLACK, WHITE, BLACK, WHITE, WHITE, WHITE, WHITE,
                        BLACK, WHITE, BLACK, WHITE, WHITE, BLACK,
                    ],
                )],
            ),
            mc(
                "Which of the graphs <image 1>, <image 2>, <image 3> and <image 4> is a tree?",
                &["<image 1>", "<image 2>", "<image 3>", "<image 4>"],
                "D",
                vec![
                    graph(4, &[(0, 1), (1, 2), (2, 3), (3, 0)], GREEN),
                    graph(4, &[(0, 1), (1, 2), (2, 0), (2, 3)], GREEN),
                    graph(5, &[(0, 1), (1, 2), (2, 3), (3, 4), (4, 0)], GREEN),
                    graph(5, &[(0, 1), (0, 2), (0, 3), (0, 4)], GREEN),
                ],
            ),
            open(
                "Reading the black cells of <image 1> as 1 and white cells as 0, left to right, what is the binary number in decimal?",
                "10",
                vec![grid(4, 1, 24, &[BLACK, WHITE, BLACK, WHITE])],
            ),
            mc(
                "Which colour appears most often in the grid <image 1>?",
                &["Red", "Green", "Blue"],
                "A",
                vec![grid(
                    3,
                    3,
                    30,
                    &[RED, GREEN, RED, BLUE, RED, GREEN, RED, BLUE, RED],
                )],
            ),
        ],
        "Geography" => vec![
            mc(
                "Which quadrant of the map <image 1> contains the blue lake?",
                &["Top left", "Top right", "Bottom left", "Bottom right"],
                "D",
                vec![shapes(240, 160, GREEN, |c| c.circle(180, 120, 25, BLUE))],
            ),
            open(
                "How many islands (green shapes) are shown in <image 1>?",
                "4",
                vec![shapes(300, 200, NAVY, |c| {
                    c.circle(50, 50, 20, GREEN);
                    c.circle(230, 40, 25, GREEN);
                    c.rect(100, 120, 160, 170, GREEN);
                    c.triangle([(220, 180), (280, 180), (250, 120)], GREEN);
                })],
            ),
            open(
                "What colour is the sea in <image 1>?",
                "['blue', 'navy']",
                vec![shapes(160, 100, NAVY, |c| c.rect(0, 70, 160, 100, SAND))],
            ),
            mc(
                "Maps <image 1>, <image 2> and <image 3> show the same region in three seasons. In which one is the lake largest?",
                &["<image 1>", "<image 2>", "<image 3>"],
                "A",
                vec![
                    shapes(120, 80, GREEN, |c| c.circle(60, 40, 30, BLUE)),
                    shapes(120, 80, GREEN, |c| c.circle(60, 40, 15, BLUE)),
                    shapes(120, 80, GREEN, |c| c.circle(60, 40, 22, BLUE)),
                ],
            ),
            mc(
                "In <image 1>, the yellow marker lies on which side of the river?",
                &["North", "South"],
                "A",
                vec![shapes(200, 120, GREEN, |c| {
                    c.rect(0, 55, 200, 70, BLUE);
                    c.circle(100, 25, 8, YELLOW);
                })],
            ),
            open(
                "<image 1> is drawn at a scale where one grid cell is 10 km. How wide is the desert (the sand-coloured band), in km?",
                "30",
                vec![grid(6, 3, 20, &[GREEN, SAND, SAND, SAND, GREEN, GREEN])],
            ),
        ],
        "Math" => vec![
            mc(
                "In <image 1>, which bar is the tallest?",
                &["Bar 1", "Bar 2", "Bar 3", "Bar 4"],
                "C",
                vec![bar_chart(&[3, 5, 9, 4], &[BLUE])],
            ),
            open(
                "What is the sum of the heights of the bars in <image 1>? One grid line = 1 unit.",
                "12",
                vec![bar_chart(&[2, 3, 7], &[ORANGE, GREEN, PURPLE])],
            ),
            open(
                "The bars in <image 1> have heights 1, 2 and 4 units. What is their mean? Round to two decimals.",
                "2.33",
                vec![bar_chart(&[1, 2, 4], &[GREY])],
            ),
            open(
                "What fraction of the cells in <image 1> are shaded?",
                "1/4",
                vec![grid(
                    4,
                    2,
                    25,
                    &[RED, WHITE, WHITE, WHITE, WHITE, WHITE, RED, WHITE],
                )],
            ),
            mc(
                "How many circles are in <image 1>?",
                &["2", "3", "4", "5"],
                "B",
                vec![shapes(180, 80, WHITE, |c| {
                    c.circle(30, 40, 20, RED);
                    c.circle(90, 40, 20, GREEN);
                    c.circle(150, 40, 20, BLUE);
                })],
            ),
            mc(
                "<image 1> and <image 2> show two squares. What is the ratio of the area of the second to the first?",
                &["1", "2", "4", "8"],
                "C",
                vec![
                    shapes(100, 100, WHITE, |c| c.rect(35, 35, 65, 65, BLUE)),
                    shapes(100, 100, WHITE, |c| c.rect(20, 20, 80, 80, BLUE)),
                ],
            ),
        ],
        "Physics" => vec![
            open(
                "A 2 kg ball (<image 1>) falls freely near the Earth's surface. What is its acceleration in m/s^2?",
                "9.8",
                vec![shapes(80, 120, WHITE, |c| {
                    c.circle(40, 30, 15, RED);
                    c.line((40, 50), (40, 110), BLACK);
                    c.triangle([(34, 100), (46, 100), (40, 112)], BLACK);
                })],
            ),
            mc(
                "Which of the circuits <image 1> and <image 2> has the two lamps in parallel?",
                &["<image 1>", "<image 2>", "Both", "Neither"],
                "B",
                vec![
                    shapes(160, 100, WHITE, |c| {
                        c.line((20, 50), (140, 50), BLACK);
                        c.circle(60, 50, 10, YELLOW);
                        c.circle(100, 50, 10, YELLOW);
                    }),
                    shapes(160, 100, WHITE, |c| {
                        c.line((20, 30), (140, 30), BLACK);
                        c.line((20, 70), (140, 70), BLACK);
                        c.circle(80, 30, 10, YELLOW);
                        c.circle(80, 70, 10, YELLOW);
                    }),
                ],
            ),
            open(
                "The bar in <image 1> shows a force of 1,000 N per grid unit times the bar height in units (height 1). What is the force in N?",
                "1000",
                vec![bar_chart(&[1], &[RED])],
            ),
            mc(
                "In <image 1>, which arrow shows the direction of the net force on the block?",
                &["Left", "Right", "Up", "Down"],
                "B",
                vec![shapes(200, 100, WHITE, |c| {
                    c.rect(80, 35, 120, 65, GREY);
                    c.line((120, 50), (190, 50), RED);
                    c.triangle([(180, 42), (180, 58), (195, 50)], RED);
                    c.line((80, 50), (50, 50), BLUE);
                })],
            ),
            mc(
                "A wave is drawn in <image 1>. How many full wavelengths are shown?",
                &["1", "2", "3", "4"],
                "B",
                vec![{
                    let mut c = Canvas::new(240, 80, WHITE);
                    for x in 0..240 {
                        let y = 40.0 - 25.0 * (std::f64::consts::TAU * f64::from(x) / 120.0).sin();
                        c.rect(x, y.round() as i32 - 1, x + 1, y.round() as i32 + 2, BLUE);
                    }
                    c
                }],
            ),
            open(
                "The spring in <image 1> stretches 0.05 m under a 2 N load. What is its spring constant in N/m?",
                "40",
                vec![shapes(100, 150, WHITE, |c| {
                    c.rect(20, 5, 80, 12, GREY);
                    for i in 0..8 {
                        c.line((40, 15 + 12 * i), (60, 21 + 12 * i), BLACK);
                        c.line((60, 21 + 12 * i), (40, 27 + 12 * i), BLACK);
                    }
                    c.rect(35, 115, 65, 140, RED);
                })],
            ),
        ],
        _ => Vec::new(),
    }
}

/// The subjects of the sample set, in evaluation order.
pub const SAMPLE_SUBJECTS: [&str; 5] = ["Art", "Computer_Science", "Geography", "Math", "Physics"];

/// All sample items: six validation items per subject, then one dev item per subject (the first
/// validation question again, with a dev id).
pub fn sample_items() -> Result<Vec<SampleItem>> {
    let mut out = Vec::new();
    for split in ["validation", "dev"] {
        for subject in SAMPLE_SUBJECTS {
            let specs = subject_specs(subject);
            let take = if split == "dev" { 1 } else { specs.len() };
            for (i, spec) in specs.into_iter().take(take).enumerate() {
                let id = format!("{split}_{subject}_{}", i + 1);
                let mut images = Vec::new();
                for (j, canvas) in spec.images.iter().enumerate() {
                    let k = j as u32 + 1;
                    images.push(ItemImage {
                        k,
                        bytes: canvas.png(&format!("{id} image_{k}"))?,
                        path: None,
                    });
                }
                let options: Vec<String> = spec.options.iter().map(|s| s.to_string()).collect();
                let qtype = if options.is_empty() {
                    "open"
                } else {
                    "multiple-choice"
                };
                out.push(SampleItem {
                    split,
                    subject,
                    row: ParquetRow {
                        id: Some(id),
                        question: Some(spec.question.into()),
                        options: Some(repr_str_list(&options)),
                        explanation: Some(String::new()),
                        images,
                        img_type: Some(spec.img_type.into()),
                        answer: Some(spec.answer.into()),
                        topic_difficulty: Some(spec.difficulty.into()),
                        question_type: Some(qtype.into()),
                        subfield: Some(spec.subfield.into()),
                    },
                });
            }
        }
    }
    Ok(out)
}

/// Writes the sample set under `dir` (see the module docs) and returns the files written.
pub fn write_sample_set(dir: &Path) -> Result<Vec<PathBuf>> {
    let items = sample_items()?;
    let mut files = Vec::new();
    for split in ["validation", "dev"] {
        for subject in SAMPLE_SUBJECTS {
            let rows: Vec<ParquetRow> = items
                .iter()
                .filter(|i| i.split == split && i.subject == subject)
                .map(|i| i.row.clone())
                .collect();
            let sub = dir.join(subject);
            std::fs::create_dir_all(&sub).map_err(|e| Error::io(&sub, e))?;
            let path = sub.join(format!("{split}-00000-of-00001.parquet"));
            write_mmmu_parquet(&path, &rows)?;
            files.push(path);
        }
    }
    let answers: serde_json::Map<String, serde_json::Value> = items
        .iter()
        .filter_map(|i| {
            Some((
                i.row.id.clone()?,
                serde_json::Value::String(i.row.answer.clone()?),
            ))
        })
        .collect();
    let readme = dir.join("README.md");
    std::fs::write(&readme, sample_readme(&items)).map_err(|e| Error::io(&readme, e))?;
    files.push(readme);
    let path = dir.join("answers.json");
    let text = serde_json::to_string_pretty(&answers).map_err(|e| Error::BadJson {
        path: path.clone(),
        message: e.to_string(),
    })?;
    std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))?;
    files.push(path);
    Ok(files)
}

fn sample_readme(items: &[SampleItem]) -> String {
    let mut o = String::from(
        "# MMMU sample set (generated)\n\n\
         A tiny set in the layout and schema of the Hugging Face `MMMU/MMMU` parquet files, drawn by\n\
         code with known answers, for testing the accuracy harness without the real data. Do not edit:\n\
         regenerate with\n\n\
         ```text\ncargo run -p phi3v-accuracy --example write_mmmu_sample -- tests/fixtures/mmmu_sample\n```\n\n\
         (`phi3v_accuracy::sample::write_sample_set`; the test `committed_files_are_reproducible` checks\n\
         that these files equal a fresh generation).\n\n\
         - `{Subject}/validation-00000-of-00001.parquet`: six items per subject; \
         `{Subject}/dev-00000-of-00001.parquet`: one (the first validation question with a dev id).\n\
         - Columns: id, question, options (Python list literal), explanation, image_1..image_7\n  \
         (struct {bytes, path}, null when absent), img_type, answer, topic_difficulty, question_type,\n  \
         subfield. Snappy compression, `huggingface` features metadata.\n\
         - `answers.json`: id -> answer column.\n\n\
         | id | type | images | answer |\n|---|---|---:|---|\n",
    );
    for it in items {
        let r = &it.row;
        o += &format!(
            "| {} | {} | {} | `{}` |\n",
            r.id.as_deref().unwrap_or(""),
            r.question_type.as_deref().unwrap_or(""),
            r.images.len(),
            r.answer.as_deref().unwrap_or("")
        );
    }
    o
}
