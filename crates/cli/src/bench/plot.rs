//! `braid bench --plot FILE.svg`: the sweep's figures drawn as one SVG (with `plotters`), two panels
//! stacked under a title that names the model, dtype, device and inputs — on top throughput (seq/s),
//! below tail latency (p99 per call, ms, log scale), both against caller threads on a log2 axis ticked
//! at the measured counts. One series per (batch size, mode): a colour per batch size, `engine` solid
//! with filled dots, `direct` dashed with hollow squares; one legend beside the panels names them
//! ("batch 64, engine").
//!
//! This module owns the drawing only: the file is opened before the run ([`super::OutputFile`]) and
//! the SVG text this returns is written by `bench::run`. Text is SVG `<text>`, laid out with plotters'
//! built-in size estimate, so no font crate is needed.

use anyhow::{anyhow, Result};
use plotters::coord::combinators::{LogCoord, WithKeyPoints};
use plotters::element::{ComposedElement, DashedPathElement};
use plotters::prelude::*;

use super::{BenchMode, BenchPoint};

/// The whole picture, in SVG pixels.
const WIDTH: u32 = 1100;
const HEIGHT: u32 = 1000;
/// The title block above the panels.
const HEADER_HEIGHT: u32 = 96;
/// The legend column to the right of the panels.
const LEGEND_WIDTH: u32 = 220;
const FONT: &str = "sans-serif";

/// Okabe–Ito colours (told apart with the common colour-vision deficiencies too), one per batch size
/// in the order of `--batch`, repeating after seven.
const COLOURS: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];

/// What the title says about the run.
pub(super) struct PlotTitle<'a> {
    pub model: &'a str,
    pub dtype: &'a str,
    pub device: &'a str,
    pub inputs: &'a str,
    pub seconds: f64,
    pub cores: usize,
}

/// One line of the plot: the points of one (batch size, mode), by caller threads.
struct Series {
    batch: usize,
    mode: BenchMode,
    colour: RGBColor,
    /// (threads, seq/s, p99 ms), threads ascending.
    points: Vec<(usize, f64, f64)>,
}

impl Series {
    fn label(&self) -> String {
        format!("batch {}, {}", self.batch, self.mode)
    }
}

/// The SVG of `points` (one panel of throughput, one of p99 latency), as text.
pub(super) fn render(points: &[BenchPoint], title: &PlotTitle<'_>) -> Result<String> {
    let series = group(points);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let (header, body) = root.split_vertically(HEADER_HEIGHT);
        draw_header(&header, title)?;
        let (panels, legend) = body.split_horizontally(WIDTH - LEGEND_WIDTH);
        let (top, bottom) = panels.split_vertically((HEIGHT - HEADER_HEIGHT) / 2);
        let threads = ThreadAxis::new(points);
        draw_throughput(&top, &threads, &series)?;
        draw_latency(&bottom, &threads, &series)?;
        draw_legend(&legend, &series)?;
        root.present().map_err(draw_error)?;
    }
    Ok(svg)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn draw_error<E: std::error::Error + Send + Sync>(error: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow!("cannot draw the plot: {error}")
}

/// The points grouped into series in the order they ran (batch sizes as `--batch` gives them, modes
/// as `--mode` does), each series' points by caller threads.
fn group(points: &[BenchPoint]) -> Vec<Series> {
    let mut batches: Vec<usize> = Vec::new();
    let mut series: Vec<Series> = Vec::new();
    for p in points {
        if !batches.contains(&p.batch) {
            batches.push(p.batch);
        }
        let index = match series
            .iter()
            .position(|s| s.batch == p.batch && s.mode == p.mode)
        {
            Some(index) => index,
            None => {
                let colour = batches.iter().position(|&b| b == p.batch).unwrap_or(0);
                series.push(Series {
                    batch: p.batch,
                    mode: p.mode,
                    colour: COLOURS[colour % COLOURS.len()],
                    points: Vec::new(),
                });
                series.len() - 1
            }
        };
        series[index]
            .points
            .push((p.threads, p.seq_per_s, p.p99_ms));
    }
    for s in &mut series {
        s.points.sort_by_key(|&(threads, _, _)| threads);
    }
    series
}

/// The x axis of both panels: caller threads on a log scale (each doubling the same width), ticked at
/// the measured counts only.
struct ThreadAxis {
    range: std::ops::Range<f64>,
    ticks: Vec<f64>,
}

/// The x coordinate of both panels.
type ThreadCoord = WithKeyPoints<LogCoord<f64>>;

impl ThreadAxis {
    fn new(points: &[BenchPoint]) -> Self {
        let mut ticks: Vec<f64> = points.iter().map(|p| p.threads.max(1) as f64).collect();
        ticks.sort_by(f64::total_cmp);
        ticks.dedup();
        let (low, high) = match (ticks.first(), ticks.last()) {
            (Some(&low), Some(&high)) => (low, high),
            _ => (1.0, 1.0),
        };
        // A margin each side: a third of a doubling, more for a wide sweep.
        let pad = ((high / low).log2() * 0.05).max(0.35).exp2();
        Self {
            range: low / pad..high * pad,
            ticks,
        }
    }

    fn coord(&self) -> ThreadCoord {
        self.range
            .clone()
            .log_scale()
            .base(2.0)
            .with_key_points(self.ticks.clone())
    }
}

/// A thread count as an x value.
fn threads_x(threads: usize) -> f64 {
    threads.max(1) as f64
}

/// The thread count at an x tick.
fn thread_label(x: &f64) -> String {
    format!("{}", x.round())
}

fn draw_header(area: &Area<'_>, title: &PlotTitle<'_>) -> Result<()> {
    // The device's description can be long (a GPU's name, memory, driver): it gets a line of its own
    // in the smaller font, so the heading never runs past the edge.
    let heading = format!("braid bench: {} ({})", title.model, title.dtype);
    let details = format!(
        "inputs: {}; {} s per point; host: {} cores; braid {}",
        title.inputs,
        title.seconds,
        title.cores,
        env!("CARGO_PKG_VERSION")
    );
    area.draw(&Text::new(
        heading,
        (24, 14),
        (FONT, 24).into_font().style(FontStyle::Bold),
    ))
    .map_err(draw_error)?;
    for (line, y) in [(format!("on {}", title.device), 46), (details, 70)] {
        area.draw(&Text::new(
            line,
            (24, y),
            (FONT, 16).into_font().color(&RGBColor(70, 70, 70)),
        ))
        .map_err(draw_error)?;
    }
    Ok(())
}

/// The top panel: sequences per second against caller threads, from 0.
fn draw_throughput(area: &Area<'_>, threads: &ThreadAxis, series: &[Series]) -> Result<()> {
    let most = series
        .iter()
        .flat_map(|s| s.points.iter().map(|&(_, seq_per_s, _)| seq_per_s))
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold(0.0, f64::max);
    let top = if most > 0.0 { most * 1.12 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Throughput: sequences per second against caller threads",
            (FONT, 20),
        )
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(84)
        .build_cartesian_2d(threads.coord(), 0.0..top)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("caller threads")
        .y_desc("seq/s")
        .x_label_formatter(&thread_label)
        .y_label_formatter(&|v: &f64| seq_label(*v))
        .light_line_style(TRANSPARENT)
        .axis_desc_style((FONT, 16))
        .label_style((FONT, 14))
        .draw()
        .map_err(draw_error)?;
    for s in series {
        let line: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|&&(_, v, _)| v.is_finite())
            .map(|&(t, v, _)| (threads_x(t), v))
            .collect();
        draw_line(&mut chart, s, line)?;
    }
    Ok(())
}

/// The bottom panel: p99 latency per call (ms, log scale) against caller threads.
fn draw_latency(area: &Area<'_>, threads: &ThreadAxis, series: &[Series]) -> Result<()> {
    let values: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|&(_, _, p99)| p99))
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let (low, high) = match (
        values.iter().copied().reduce(f64::min),
        values.iter().copied().reduce(f64::max),
    ) {
        (Some(low), Some(high)) => (nice_below(low / 1.15), nice_above(high * 1.15)),
        _ => (1.0, 10.0),
    };
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Tail latency: p99 per call (ms, log scale) against caller threads",
            (FONT, 20),
        )
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(84)
        .build_cartesian_2d(
            threads.coord(),
            (low..high).log_scale().with_key_points(ticks(low, high)),
        )
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("caller threads")
        .y_desc("p99 latency (ms)")
        .x_label_formatter(&thread_label)
        .y_label_formatter(&|v: &f64| ms_label(*v))
        .axis_desc_style((FONT, 16))
        .label_style((FONT, 14))
        .draw()
        .map_err(draw_error)?;
    for s in series {
        let line: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|&&(_, _, v)| v.is_finite() && v > 0.0)
            .map(|&(t, _, v)| (threads_x(t), v))
            .collect();
        draw_line(&mut chart, s, line)?;
    }
    Ok(())
}

/// One series in a panel: its line (solid for the engine, dashed for direct) and its markers.
fn draw_line<Y>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<ThreadCoord, Y>>,
    series: &Series,
    line: Vec<(f64, f64)>,
) -> Result<()>
where
    Y: Ranged<ValueType = f64>,
{
    let stroke = series.colour.stroke_width(2);
    match series.mode {
        BenchMode::Engine => {
            chart
                .draw_series(LineSeries::new(line.iter().copied(), stroke))
                .map_err(draw_error)?;
            chart
                .draw_series(line.iter().map(|&at| dot(at, series.colour)))
                .map_err(draw_error)?;
        }
        BenchMode::Direct => {
            chart
                .draw_series(DashedLineSeries::new(line.iter().copied(), 9, 6, stroke))
                .map_err(draw_error)?;
            chart
                .draw_series(line.iter().map(|&at| square(at, series.colour)))
                .map_err(draw_error)?;
        }
    }
    Ok(())
}

/// A hollow square: a white one under a coloured outline, offsets in pixels from the anchor.
type Square<C, DB> = ComposedElement<C, DB, Rectangle<(i32, i32)>, Rectangle<(i32, i32)>>;

/// The engine's marker at `at` (a point's coordinates, or a pixel in the legend): a filled dot.
fn dot<C>(at: C, colour: RGBColor) -> Circle<C, i32> {
    Circle::new(at, 5, colour.filled())
}

/// Direct mode's marker at `at`: a hollow square.
fn square<DB: DrawingBackend, C>(at: C, colour: RGBColor) -> Square<C, DB> {
    EmptyElement::at(at)
        + Rectangle::new([(-4, -4), (4, 4)], WHITE.filled())
        + Rectangle::new([(-4, -4), (4, 4)], colour.stroke_width(2))
}

/// The legend column: one entry per series, its line, its marker and "batch N, mode".
fn draw_legend(area: &Area<'_>, series: &[Series]) -> Result<()> {
    let (x, mut y) = (8, 40);
    area.draw(&Text::new(
        "series",
        (x, y - 8),
        (FONT, 16).into_font().style(FontStyle::Bold),
    ))
    .map_err(draw_error)?;
    y += 20;
    for s in series {
        let stroke = s.colour.stroke_width(2);
        let sample = vec![(x, y), (x + 40, y)];
        let at = (x + 20, y);
        match s.mode {
            BenchMode::Engine => area
                .draw(&PathElement::new(sample, stroke))
                .and_then(|()| area.draw(&dot(at, s.colour))),
            BenchMode::Direct => area
                .draw(&DashedPathElement::new(sample, 9, 6, stroke))
                .and_then(|()| area.draw(&square(at, s.colour))),
        }
        .map_err(draw_error)?;
        area.draw(&Text::new(
            s.label(),
            (x + 52, y - 8),
            (FONT, 15).into_font(),
        ))
        .map_err(draw_error)?;
        y += 26;
    }
    let key = [
        "engine: solid, filled dots",
        "direct: dashed, hollow squares",
        "colour: batch size",
    ];
    y += 12;
    for line in key {
        area.draw(&Text::new(
            line,
            (x, y),
            (FONT, 13).into_font().color(&RGBColor(90, 90, 90)),
        ))
        .map_err(draw_error)?;
        y += 18;
    }
    Ok(())
}

/// The largest 1, 2 or 5 × 10^k at most `v` (`v` > 0).
fn nice_below(v: f64) -> f64 {
    let scale = 10f64.powf(v.log10().floor());
    let m = v / scale;
    let step = [5.0, 2.0, 1.0]
        .into_iter()
        .find(|&s| s <= m * (1.0 + 1e-9))
        .unwrap_or(1.0);
    step * scale
}

/// The smallest 1, 2 or 5 × 10^k at least `v` (`v` > 0).
fn nice_above(v: f64) -> f64 {
    let scale = 10f64.powf(v.log10().floor());
    let m = v / scale;
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .find(|&s| s >= m * (1.0 - 1e-9))
        .unwrap_or(10.0);
    step * scale
}

/// The 1-2-5 ticks from `low` to `high`, both included (they are 1-2-5 values themselves).
fn ticks(low: f64, high: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut decade = 10f64.powf(low.log10().floor());
    while decade <= high * (1.0 + 1e-9) {
        for step in [1.0, 2.0, 5.0] {
            let v = step * decade;
            if v >= low * (1.0 - 1e-9) && v <= high * (1.0 + 1e-9) {
                ticks.push(v);
            }
        }
        decade *= 10.0;
    }
    ticks
}

/// A throughput tick: thousands as `k` from 10 000 up, whole numbers else (tenths below 10).
fn seq_label(v: f64) -> String {
    if v >= 10_000.0 {
        let k = v / 1000.0;
        if k.fract().abs() < 1e-9 {
            format!("{k:.0}k")
        } else {
            format!("{k:.1}k")
        }
    } else if v < 10.0 && v.fract().abs() > 1e-9 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// A latency tick: whole milliseconds from 1 up, else as many decimals as the value needs.
fn ms_label(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        let decimals = (-v.log10()).ceil().clamp(1.0, 6.0) as usize;
        format!("{v:.decimals$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(
        mode: BenchMode,
        threads: usize,
        batch: usize,
        seq_per_s: f64,
        p99: f64,
    ) -> BenchPoint {
        BenchPoint {
            mode,
            threads,
            batch,
            sequences: 10,
            seconds: 1.0,
            seq_per_s,
            p50_ms: p99 / 2.0,
            p99_ms: p99,
            mean_tokens: 12.0,
            hit_rate: 1.0,
            peak_reserved_bytes: 0,
            leaked_slots: 0,
            mean_batch: batch as f64,
            padding_share: 0.1,
            device_sequences: vec![("cpu:0".into(), 10)],
        }
    }

    #[test]
    fn ticks_are_one_two_five_and_cover_the_range() {
        assert_eq!(nice_below(3.7), 2.0);
        assert_eq!(nice_below(0.012), 0.01);
        assert_eq!(nice_above(3.7), 5.0);
        assert_eq!(nice_above(6.0), 10.0);
        assert_eq!(nice_above(200.0), 200.0);
        assert_eq!(ticks(2.0, 50.0), vec![2.0, 5.0, 10.0, 20.0, 50.0]);
        assert_eq!(ms_label(0.05), "0.05");
        assert_eq!(ms_label(0.2), "0.2");
        assert_eq!(ms_label(20.0), "20");
        assert_eq!(seq_label(120_000.0), "120k");
        assert_eq!(seq_label(12_500.0), "12.5k");
        assert_eq!(seq_label(500.0), "500");
        assert_eq!(seq_label(2.5), "2.5");
        assert_eq!(thread_label(&threads_x(16)), "16");
    }

    #[test]
    fn one_series_per_batch_and_mode_in_run_order() {
        let points = [
            point(BenchMode::Direct, 2, 64, 10.0, 5.0),
            point(BenchMode::Engine, 2, 64, 12.0, 4.0),
            point(BenchMode::Direct, 1, 64, 6.0, 3.0),
            point(BenchMode::Engine, 1, 64, 7.0, 3.5),
            point(BenchMode::Direct, 1, 1, 3.0, 1.0),
        ];
        let series = group(&points);
        let labels: Vec<String> = series.iter().map(Series::label).collect();
        assert_eq!(
            labels,
            ["batch 64, direct", "batch 64, engine", "batch 1, direct"]
        );
        assert_eq!(series[0].points[0].0, 1, "sorted by threads");
        assert_eq!(
            series[0].colour, series[1].colour,
            "a colour per batch size"
        );
        assert_ne!(series[0].colour, series[2].colour);
    }

    #[test]
    fn renders_without_numbers_to_draw() {
        // A point with no finite figures (no calls) still gives a plot rather than an error or a panic.
        let points = [
            point(BenchMode::Engine, 1, 8, f64::NAN, f64::NAN),
            point(BenchMode::Engine, 4, 8, 100.0, 12.0),
        ];
        let title = PlotTitle {
            model: "m",
            dtype: "f32",
            device: "cpu & <test>",
            inputs: "i",
            seconds: 0.1,
            cores: 2,
        };
        let svg = render(&points, &title).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.contains("cpu &amp; &lt;test&gt;"), "text is escaped");
        assert!(svg.contains("batch 8, engine"));
        let empty = render(&[], &title).unwrap();
        assert!(empty.starts_with("<svg"));
    }
}
