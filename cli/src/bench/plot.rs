//! PNG graphs like the seeds' model cards: per (prompt, output) shape, total throughput,
//! per-request speed and time to first token against parallel requests (p25–p75 bars); prompt
//! ingestion against prompt length.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::FontStyle;

use super::report::{BenchReport, GenerationPoint, Percentiles};
use crate::CliResult;

/// DejaVu Sans Mono (Bitstream Vera license, cli/assets/DejaVuSansMono.LICENSE): graphs render
/// the same on machines without fonts.
static FONT: &[u8] = include_bytes!("../../assets/DejaVuSansMono.ttf");

const W: u32 = 1500;
const H: u32 = 420;

fn err(e: impl std::fmt::Display) -> Box<dyn std::error::Error + Send + Sync> {
    format!("plotting failed: {e}").into()
}

/// Draws every graph the report has data for into `dir`; returns the file names.
pub fn draw_all(r: &BenchReport, dir: &Path) -> CliResult<Vec<String>> {
    // Registering twice is harmless (the second registration replaces the first).
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).map_err(|_| err("bad embedded font"))?;
    let mut names = Vec::new();
    let mut shapes: Vec<(usize, usize)> = r.generation.iter().filter(|g| g.skipped.is_none()).map(|g| (g.prompt_len, g.output_len)).collect();
    shapes.dedup();
    for (p, o) in shapes {
        let points: Vec<&GenerationPoint> = r.generation.iter().filter(|g| g.skipped.is_none() && (g.prompt_len, g.output_len) == (p, o)).collect();
        let name = format!("generation_{p}x{o}.png");
        save(&dir.join(&name), |root| generation_graph(root, r, p, o, &points))?;
        names.push(name);
    }
    if r.prefill.iter().any(|p| p.skipped.is_none()) {
        let name = "prefill.png".to_string();
        save(&dir.join(&name), |root| prefill_graph(root, r))?;
        names.push(name);
    }
    Ok(names)
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// Renders into an RGB buffer and saves it as PNG with the `image` crate.
fn save(path: &Path, draw: impl FnOnce(&Area) -> CliResult<()>) -> CliResult<()> {
    let mut buf = vec![255u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw(&root)?;
        root.present().map_err(err)?;
    }
    let img = image::RgbImage::from_raw(W, H, buf).ok_or_else(|| err("buffer size"))?;
    img.save(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    Ok(())
}

/// Points of one line: (x, p50 or single value, optional p25–p75 bar).
type Series = Vec<(f64, f64, Option<(f64, f64)>)>;

/// One panel: per named series a line through the values with optional p25–p75 bars.
fn panel(area: &Area, title: &str, y_desc: &str, series: &[(String, Series)]) -> CliResult<()> {
    let all = || series.iter().flat_map(|(_, s)| s.iter());
    let x_max = all().map(|p| p.0).fold(1.0, f64::max) * 1.5;
    let y_max = all().map(|p| p.2.map_or(p.1, |b| b.1).max(p.1)).fold(0.0, f64::max) * 1.15 + 1e-9;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d((0.7f64..x_max).log_scale(), 0f64..y_max)
        .map_err(err)?;
    chart.configure_mesh().light_line_style(WHITE).x_labels(6).x_label_formatter(&|x| format!("{x:.0}")).x_desc("parallel requests").y_desc(y_desc).label_style(("sans-serif", 13)).draw().map_err(err)?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points.iter().map(|p| (p.0, p.1)), color.stroke_width(2)))
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(points.iter().map(|p| Circle::new((p.0, p.1), 4, color.filled()))).map_err(err)?;
        chart
            .draw_series(points.iter().filter_map(|p| p.2.map(|(lo, hi)| PathElement::new(vec![(p.0, lo), (p.0, hi)], color.stroke_width(2)))))
            .map_err(err)?;
    }
    if series.len() > 1 {
        chart.configure_series_labels().position(SeriesLabelPosition::UpperLeft).background_style(WHITE.mix(0.8)).border_style(BLACK).label_font(("sans-serif", 13)).draw().map_err(err)?;
    }
    Ok(())
}

fn bars(p: &Percentiles) -> Option<(f64, f64)> {
    Some((p.p25, p.p75))
}

fn generation_graph(root: &Area, r: &BenchReport, p: usize, o: usize, points: &[&GenerationPoint]) -> CliResult<()> {
    let (top, body) = root.split_vertically(34);
    top.draw(&Text::new(
        format!("{} · {} · {} · prompt {p} → output {o} tokens", r.model, r.device_name, r.engine),
        (12, 8),
        ("sans-serif", 18),
    ))
    .map_err(err)?;
    let panels = body.split_evenly((1, 3));
    let modes = super::report::batching_modes(r);
    // A point's value and its error bar, if any.
    type Value = (f64, Option<(f64, f64)>);
    let series = |f: &dyn Fn(&GenerationPoint) -> Value| -> Vec<(String, Series)> {
        modes
            .iter()
            .map(|m| {
                let s = points.iter().filter(|g| &g.batching == m).map(|g| {
                    let (v, bar) = f(g);
                    (g.parallel as f64, v, bar)
                });
                (format!("{m} batching"), s.collect())
            })
            .collect()
    };
    let total = series(&|g| (g.total_tokens_per_s, None));
    let per = series(&|g| (g.per_request_tokens_per_s.p50, bars(&g.per_request_tokens_per_s)));
    let ttft = series(&|g| (g.ttft_ms.p50, bars(&g.ttft_ms)));
    panel(&panels[0], "total throughput", "tokens/s", &total)?;
    panel(&panels[1], "per-request speed (p25-p75)", "tokens/s", &per)?;
    panel(&panels[2], "time to first token (p25-p75)", "ms", &ttft)?;
    Ok(())
}

fn prefill_graph(root: &Area, r: &BenchReport) -> CliResult<()> {
    let ok: Vec<_> = r.prefill.iter().filter(|p| p.skipped.is_none()).collect();
    let x_max = ok.iter().map(|p| p.prompt_len as f64).fold(1.0, f64::max) * 1.5;
    let y_max = ok.iter().map(|p| p.tokens_per_s).fold(0.0, f64::max) * 1.15 + 1e-9;
    let mut chart = ChartBuilder::on(root)
        .caption(format!("prompt ingestion · {} · {} · {}", r.model, r.device_name, r.engine), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(72)
        .build_cartesian_2d((64f64..x_max).log_scale(), 0f64..y_max)
        .map_err(err)?;
    chart.configure_mesh().light_line_style(WHITE).x_labels(6).x_label_formatter(&|x| format!("{x:.0}")).x_desc("prompt tokens").y_desc("tokens/s").label_style(("sans-serif", 13)).draw().map_err(err)?;
    let mut batches: Vec<usize> = ok.iter().map(|p| p.batch).collect();
    batches.dedup();
    for (i, b) in batches.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = ok.iter().filter(|p| p.batch == *b).map(|p| (p.prompt_len as f64, p.tokens_per_s)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(format!("batch {b}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled()))).map_err(err)?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).label_font(("sans-serif", 14)).draw().map_err(err)?;
    Ok(())
}
