//! SVG line charts of benchmark results (plotters), written beside the report they belong to.

use super::BenchError;
use plotters::prelude::*;
use std::path::Path;

/// One line: its name and its (x, y) points.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Points in x order.
    pub points: Vec<(f64, f64)>,
    /// Dashed lines are the peers (ISA-L, qemu-nbd), solid ones amf.
    pub peer: bool,
}

/// Axis descriptions and scale of a chart.
pub struct Axes<'a> {
    /// Title above the chart.
    pub title: &'a str,
    /// X axis.
    pub x: &'a str,
    /// Y axis.
    pub y: &'a str,
    /// X on a log2 scale.
    pub log_x: bool,
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// The legend box, top right, the same on every chart.
fn legend<'a, DB: DrawingBackend + 'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
}

/// Draws `series` into an SVG file at `path`.
pub fn line_chart(path: &Path, axes: &Axes<'_>, series: &[Series]) -> Result<(), BenchError> {
    let err = |e: String| BenchError::Io { path: path.display().to_string(), source: std::io::Error::other(e) };
    let points = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0f64);
    for &(x, y) in points {
        (x0, x1, y1) = (x0.min(x), x1.max(x), y1.max(y));
    }
    if x0 >= x1 {
        return Err(err("nothing to plot".into()));
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut builder = ChartBuilder::on(&root);
        builder.caption(axes.title, ("sans-serif", 20)).margin(12).x_label_area_size(40).y_label_area_size(56);
        let y_range = 0f64..y1 * 1.1;
        macro_rules! draw {
            ($chart:expr) => {{
                let mut chart = $chart.map_err(|e| err(e.to_string()))?;
                chart.configure_mesh().x_desc(axes.x).y_desc(axes.y).draw().map_err(|e| err(e.to_string()))?;
                for (i, s) in series.iter().enumerate() {
                    let color = PALETTE[i / 2 % PALETTE.len()];
                    let style = if s.peer { color.stroke_width(1) } else { color.stroke_width(2) };
                    let pts = s.points.clone();
                    let drawn = if s.peer {
                        chart.draw_series(DashedLineSeries::new(pts, 6, 4, style))
                    } else {
                        chart.draw_series(LineSeries::new(pts, style))
                    };
                    drawn
                        .map_err(|e| err(e.to_string()))?
                        .label(s.name.clone())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
                    chart
                        .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                        .map_err(|e| err(e.to_string()))?;
                }
                legend(&mut chart).map_err(|e| err(e.to_string()))?;
            }};
        }
        if axes.log_x {
            draw!(builder.build_cartesian_2d((x0..x1).log_scale().base(2.0), y_range));
        } else {
            draw!(builder.build_cartesian_2d(x0..x1, y_range));
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    std::fs::write(path, svg).map_err(|source| BenchError::Io { path: path.display().to_string(), source })
}

/// Draws grouped bars: for each category, one bar per group (amf first, then its peer), into an
/// SVG file at `path`.
pub fn bar_chart(
    path: &Path,
    title: &str,
    y: &str,
    categories: &[String],
    groups: &[(String, Vec<f64>)],
) -> Result<(), BenchError> {
    let err = |e: String| BenchError::Io { path: path.display().to_string(), source: std::io::Error::other(e) };
    let top = groups.iter().flat_map(|(_, v)| v.iter().copied()).fold(0f64, f64::max);
    if categories.is_empty() || groups.is_empty() || top <= 0.0 {
        return Err(err("nothing to plot".into()));
    }
    let n = categories.len();
    let width = 0.8 / groups.len() as f64;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..n as f64, 0f64..top * 1.15)
            .map_err(|e| err(e.to_string()))?;
        let label = |x: &f64| {
            let i = (x - 0.5).round();
            if (x - 0.5 - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
                categories[i as usize].clone()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(2 * n + 1)
            .x_label_formatter(&label)
            .y_desc(y)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        for (g, (name, values)) in groups.iter().enumerate() {
            let color = PALETTE[g % PALETTE.len()];
            let bars = values.iter().enumerate().map(|(i, v)| {
                let x0 = i as f64 + 0.1 + g as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width * 0.9, *v)], color.filled())
            });
            chart
                .draw_series(bars)
                .map_err(|e| err(e.to_string()))?
                .label(name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        }
        legend(&mut chart).map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    std::fs::write(path, svg).map_err(|source| BenchError::Io { path: path.display().to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_an_svg_with_every_series_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.svg");
        let series = vec![
            Series { name: "amf 4+1".into(), points: vec![(4.0, 10.0), (64.0, 20.0), (1024.0, 15.0)], peer: false },
            Series { name: "ISA-L 4+1".into(), points: vec![(4.0, 8.0), (64.0, 18.0), (1024.0, 14.0)], peer: true },
        ];
        line_chart(&path, &Axes { title: "t", x: "chunk KiB", y: "GB/s", log_x: true }, &series).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("amf 4+1") && svg.contains("ISA-L 4+1"), "{svg}");
        assert!(line_chart(&path, &Axes { title: "t", x: "x", y: "y", log_x: false }, &[]).is_err(), "nothing to plot");
        let cats = vec!["4 KiB reads".to_string(), "64 KiB writes".to_string()];
        let groups = vec![("amf".to_string(), vec![10.0, 20.0]), ("qemu-nbd".to_string(), vec![12.0, 9.0])];
        bar_chart(&path, "t", "ops/s", &cats, &groups).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("4 KiB reads") && svg.contains("qemu-nbd"), "{svg}");
    }
}
