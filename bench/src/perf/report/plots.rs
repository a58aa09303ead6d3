//! The HTML report's plots, drawn with `plotters` into SVG strings (embedded in the page, so the
//! report is one file with nothing fetched from anywhere): latency over time, and latency by
//! percentile on the usual HdrHistogram axis (1/(1-q), log scale, so the tail gets the room).

use plotters::prelude::*;

/// One line of a plot.
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

const SIZE: (u32, u32) = (590, 340);
/// Latencies are drawn on a log axis; nothing below this (ms) is drawn lower.
const FLOOR_MS: f64 = 0.01;

fn color(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
    ];
    COLORS[i % COLORS.len()]
}

fn y_range(lines: &[Line]) -> std::ops::Range<f64> {
    let ys = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1.max(FLOOR_MS)));
    let (low, high) = ys.fold((f64::MAX, 0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    if high <= 0.0 {
        return FLOOR_MS..1.0;
    }
    (low / 1.5).max(FLOOR_MS)..(high * 1.5).max(low * 2.0)
}

/// Latency (ms, log scale) over the seconds of a phase.
pub fn over_time(title: &str, lines: &[Line]) -> String {
    let x_max = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .fold(0.1f64, f64::max);
    draw(title, lines, |root, title| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x_max, y_range(lines).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("seconds into the phase")
            .y_desc("ms")
            .draw()?;
        draw_lines(&mut chart, lines)
    })
}

/// Latency (ms, log scale) by percentile; `points` are `(quantile, ms)`.
pub fn percentiles(title: &str, lines: &[Line]) -> String {
    // 1/(1-q): 0 % → 1, 90 % → 10, 99 % → 100 …; the maximum is drawn a decade past the last.
    let spread: Vec<Line> = lines
        .iter()
        .map(|l| {
            let mut points = Vec::new();
            for &(q, ms) in &l.points {
                let x = if q < 1.0 {
                    1.0 / (1.0 - q)
                } else {
                    points.last().map_or(10.0, |&(x, _): &(f64, f64)| x * 10.0)
                };
                points.push((x, ms));
            }
            Line {
                label: l.label.clone(),
                points,
            }
        })
        .collect();
    let x_max = spread
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .fold(10f64, f64::max);
    draw(title, &spread, |root, title| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d((1f64..x_max).log_scale(), y_range(&spread).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("ms")
            .x_label_formatter(&|x| format!("{}%", 100.0 - (100.0 / x * 1000.0).round() / 1000.0))
            .draw()?;
        draw_lines(&mut chart, &spread)
    })
}

/// Draws each line (in the palette's order) with its legend entry.
fn draw_lines<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    lines: &[Line],
) -> Drawn
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (i, line) in lines.iter().enumerate() {
        let style = color(i).stroke_width(2);
        let points = line.points.iter().map(|&(x, y)| (x, y.max(FLOOR_MS)));
        chart
            .draw_series(LineSeries::new(points, style))?
            .label(line.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type Drawn = Result<(), Box<dyn std::error::Error>>;

/// Draws into a fresh SVG string; a plot that cannot be drawn (no points) says so instead.
fn draw(title: &str, lines: &[Line], plot: impl FnOnce(&Area<'_>, &str) -> Drawn) -> String {
    if lines.iter().all(|l| l.points.is_empty()) {
        return format!(
            "<p class=\"empty\">{}: nothing to draw</p>",
            super::html::escape(title)
        );
    }
    let mut svg = String::new();
    let drawn = {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| e.to_string())
            .and_then(|()| plot(&root, title).map_err(|e| e.to_string()))
            .and_then(|()| root.present().map_err(|e| e.to_string()))
    };
    match drawn {
        Ok(()) => svg,
        Err(e) => format!(
            "<p class=\"empty\">{}: could not be drawn ({})</p>",
            super::html::escape(title),
            super::html::escape(&e)
        ),
    }
}
