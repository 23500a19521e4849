//! SVG plots of the "ant-quic against quinn" tables (`compare --plot DIR`): one panel per row,
//! a bar for each implementation's median with a whisker over the runs' min–max, and the row's
//! ceiling (where the table has one) as a dashed line. Fed by the same report the markdown table
//! is printed from, so the two cannot disagree.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::prelude::*;
use plotters::style::text_anchor;

/// Median and spread of one implementation's runs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spread {
    pub median: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// One row of a compared table.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotRow {
    /// What the table calls the row (with its core count where it has one).
    pub label: String,
    pub unit: String,
    pub ant_quic: Spread,
    pub quinn: Spread,
    /// A ceiling in the row's unit and what it is, e.g. `(44.1, "raw UDP ceiling")`.
    pub ceiling: Option<(f64, String)>,
}

/// One compared table: its header lines (machine, command, source) and its rows.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotTable {
    pub title: String,
    pub header: Vec<String>,
    pub rows: Vec<PlotRow>,
}

const WIDTH: u32 = 960;
const PANEL_HEIGHT: u32 = 120;
const HEADER_LINE: u32 = 18;
const ANT_QUIC_COLOUR: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const QUINN_COLOUR: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const CEILING_COLOUR: RGBColor = RGBColor(0xd6, 0x27, 0x28);

/// Characters of a header line before it wraps (the command lines are long).
const HEADER_WRAP: usize = 150;

/// The header lines `harness::write_header` printed (`- Machine: …`), without their bullets,
/// wrapped at spaces to fit the plot's width.
pub fn header_lines(markdown_header: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in markdown_header.lines().map(|l| l.trim_start_matches("- ").replace('`', "")) {
        let mut current = String::new();
        for word in line.split_whitespace() {
            if !current.is_empty() && current.chars().count() + 1 + word.chars().count() > HEADER_WRAP {
                out.push(std::mem::take(&mut current));
                current.push_str("    ");
            } else if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(word);
        }
        if !current.is_empty() {
            out.push(current);
        }
    }
    out
}

/// Writes `table` as `dir/name.svg`, creating `dir`; returns the file's path.
pub fn write_svg(dir: &Path, name: &str, table: &PlotTable) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{name}.svg"));
    std::fs::write(&path, render_svg(table)?).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The table as an SVG document.
pub fn render_svg(table: &PlotTable) -> Result<String> {
    let header_height = HEADER_LINE * (table.header.len() as u32 + 3);
    let height = header_height + PANEL_HEIGHT * table.rows.len().max(1) as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, body) = root.split_vertically(header_height);
        draw_header(&top, table)?;
        if table.rows.is_empty() {
            body.draw(&Text::new("no rows were measured", (20, 30), ("sans-serif", 14).into_font()))?;
        } else {
            for (panel, row) in body.split_evenly((table.rows.len(), 1)).iter().zip(&table.rows) {
                draw_row(panel, row)?;
            }
        }
        root.present()?;
    }
    Ok(svg)
}

fn draw_header<DB: DrawingBackend>(area: &DrawingArea<DB, plotters::coord::Shift>, table: &PlotTable) -> Result<()>
where
    DB::ErrorType: 'static,
{
    area.draw(&Text::new(table.title.clone(), (10, 6), ("sans-serif", 17).into_font().style(FontStyle::Bold)))?;
    let small = ("sans-serif", 12).into_font();
    let mut y = 6 + HEADER_LINE as i32 + 4;
    for line in &table.header {
        area.draw(&Text::new(line.clone(), (10, y), small.clone()))?;
        y += HEADER_LINE as i32;
    }
    // The legend: what the colours, whiskers and dashed line mean.
    let mut x = 10;
    for (colour, name) in [(ANT_QUIC_COLOUR, "ant-quic"), (QUINN_COLOUR, "quinn 0.11")] {
        area.draw(&Rectangle::new([(x, y + 2), (x + 14, y + 12)], colour.filled()))?;
        area.draw(&Text::new(name, (x + 18, y), small.clone()))?;
        x += 110;
    }
    area.draw(&Text::new("bar: median; whisker: min–max of the runs", (x, y), small.clone()))?;
    x += 300;
    area.draw(&PathElement::new(vec![(x, y + 7), (x + 24, y + 7)], CEILING_COLOUR.stroke_width(2)))?;
    area.draw(&Text::new("ceiling", (x + 30, y), small))?;
    Ok(())
}

/// One row: ant-quic's bar above quinn's, both against the same value axis.
fn draw_row<DB: DrawingBackend>(area: &DrawingArea<DB, plotters::coord::Shift>, row: &PlotRow) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let largest =
        [row.ant_quic.max, row.ant_quic.median, row.quinn.max, row.quinn.median, row.ceiling.as_ref().map(|c| c.0)]
            .into_iter()
            .flatten()
            .filter(|v| v.is_finite())
            .fold(0.0_f64, f64::max);
    let x_max = if largest > 0.0 { largest * 1.25 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{} ({})", row.label, row.unit), ("sans-serif", 14))
        .margin_left(10)
        .margin_right(20)
        .margin_bottom(4)
        .x_label_area_size(22)
        .y_label_area_size(90)
        .build_cartesian_2d(0.0..x_max, 0.0..2.0)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_labels(8)
        .x_max_light_lines(1)
        .x_label_formatter(&|v| short(*v))
        .label_style(("sans-serif", 11))
        .draw()?;

    for (name, colour, spread, centre) in
        [("ant-quic", ANT_QUIC_COLOUR, row.ant_quic, 1.5), ("quinn 0.11", QUINN_COLOUR, row.quinn, 0.5)]
    {
        let (px, py) = chart.backend_coord(&(0.0, centre));
        let label_style = ("sans-serif", 12)
            .into_font()
            .color(&BLACK)
            .pos(text_anchor::Pos::new(text_anchor::HPos::Right, text_anchor::VPos::Center));
        area.draw(&Text::new(name, (px - 6 - area.get_base_pixel().0, py - area.get_base_pixel().1), label_style))?;
        let Some(median) = spread.median else {
            chart.plotting_area().draw(&Text::new(
                "no successful run",
                (x_max * 0.02, centre + 0.1),
                ("sans-serif", 12),
            ))?;
            continue;
        };
        chart
            .plotting_area()
            .draw(&Rectangle::new([(0.0, centre - 0.32), (median, centre + 0.32)], colour.filled()))?;
        if let (Some(lo), Some(hi)) = (spread.min, spread.max) {
            let whisker = BLACK.stroke_width(2);
            chart.plotting_area().draw(&PathElement::new(vec![(lo, centre), (hi, centre)], whisker))?;
            for end in [lo, hi] {
                chart
                    .plotting_area()
                    .draw(&PathElement::new(vec![(end, centre - 0.15), (end, centre + 0.15)], whisker))?;
            }
        }
        let figure = match (spread.min, spread.max) {
            (Some(lo), Some(hi)) => format!("{} ({}–{})", short(median), short(lo), short(hi)),
            _ => short(median),
        };
        let right_of = spread.max.unwrap_or(median).max(median);
        chart.plotting_area().draw(&Text::new(figure, (right_of + x_max * 0.01, centre + 0.2), ("sans-serif", 11)))?;
    }
    if let Some((value, what)) = &row.ceiling {
        let dashes: Vec<(f64, f64)> =
            (0..10).flat_map(|i| [(*value, i as f64 * 0.2), (*value, i as f64 * 0.2 + 0.12)]).collect();
        for dash in dashes.chunks(2) {
            chart.plotting_area().draw(&PathElement::new(dash.to_vec(), CEILING_COLOUR.stroke_width(2)))?;
        }
        let style = ("sans-serif", 11)
            .into_font()
            .color(&CEILING_COLOUR)
            .pos(text_anchor::Pos::new(text_anchor::HPos::Right, text_anchor::VPos::Top));
        let left_of_line = *value - x_max * 0.006;
        chart.plotting_area().draw(&Text::new(format!("{what} {}", short(*value)), (left_of_line, 1.98), style))?;
    }
    Ok(())
}

/// A figure with as many digits as a reader needs.
fn short(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spread(median: f64, min: f64, max: f64) -> Spread {
        Spread { median: Some(median), min: Some(min), max: Some(max) }
    }

    #[test]
    fn fixed_rows_render_to_an_svg_naming_every_row_and_both_implementations() {
        let table = PlotTable {
            title: "ant-quic against quinn: bulk".into(),
            header: header_lines("- Machine: AMD EPYC, 2 cores\n- Command: `compare --pairs 3`\n"),
            rows: vec![
                PlotRow {
                    label: "download".into(),
                    unit: "Gbit/s".into(),
                    ant_quic: spread(9.72, 7.51, 10.44),
                    quinn: spread(6.92, 6.6, 6.98),
                    ceiling: Some((44.14, "raw UDP ceiling".into())),
                },
                PlotRow {
                    label: "handshakes <16 in flight> & more".into(),
                    unit: "/s".into(),
                    ant_quic: Spread::default(),
                    quinn: spread(3246.0, 3203.0, 3298.0),
                    ceiling: None,
                },
            ],
        };
        let svg = render_svg(&table).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "not an SVG document: {svg:.200}");
        // Balanced elements: every opened text and rect is closed (XML-ish enough for a viewer).
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        let long = header_lines(&format!("- Command: `{}`\n", "word ".repeat(60)));
        assert!(long.len() > 1 && long.iter().all(|l| l.chars().count() <= HEADER_WRAP), "{long:?}");
        for needed in [
            "ant-quic against quinn: bulk",
            "Machine: AMD EPYC, 2 cores",
            "Command: compare --pairs 3",
            "download (Gbit/s)",
            "handshakes &lt;16 in flight&gt; &amp; more (/s)",
            "ant-quic",
            "quinn 0.11",
            "9.72 (7.51–10.4)",
            "3246 (3203–3298)",
            "raw UDP ceiling 44.1",
            "no successful run",
        ] {
            assert!(svg.contains(needed), "the SVG lacks {needed:?}");
        }
        // Four bars' worth of rectangles would be wrong: the missing ant-quic row has none.
        let bars = svg.matches(&format!("fill=\"#{:02X}{:02X}{:02X}\"", 0x1f, 0x77, 0xb4)).count();
        assert_eq!(bars, 2, "one ant-quic bar plus its legend swatch");

        let dir = std::env::temp_dir().join(format!("ant-quic-plot-test-{}", std::process::id()));
        let path = write_svg(&dir, "compare-bulk", &table).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), svg);
        let _ = std::fs::remove_dir_all(dir);
    }
}
