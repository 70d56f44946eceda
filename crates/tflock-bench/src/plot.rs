//! The report's plots, drawn as SVG with `plotters`: throughput by clients, hand-off
//! percentiles, per-client acquisitions, queue scaling.

use std::error::Error;
use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::results::Results;

type Plot = std::result::Result<(), Box<dyn Error>>;

const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// Draws every plot the results allow into `dir`; returns the file names drawn (or
/// why one failed).
pub fn draw_all(r: &Results, dir: &Path) -> Vec<Result<String>> {
    let mut out = Vec::new();
    let mut one = |name: &str, f: &dyn Fn(&Path) -> Plot, has: bool| {
        if has {
            out.push(
                f(&dir.join(name))
                    .map(|()| name.to_string())
                    .map_err(|e| anyhow!("{name}: {e}")),
            );
        }
    };
    one("pairs.svg", &|p| pairs(r, p), !r.pairs.is_empty());
    one("handoff.svg", &|p| handoff(r, p), !r.handoff.is_empty());
    one("fairness.svg", &|p| fairness(r, p), !r.fairness.is_empty());
    one("scale.svg", &|p| scale(r, p), !r.queue_scale.is_empty());
    out
}

fn labels_in_order<'a>(it: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut v: Vec<&str> = Vec::new();
    for l in it {
        if !v.contains(&l) {
            v.push(l);
        }
    }
    v
}

fn pairs(r: &Results, path: &Path) -> Plot {
    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let ceil_max = r
        .scripts
        .iter()
        .map(|s| s.evalsha_loop_per_s / 2.0)
        .fold(0.0, f64::max);
    let ymax = r
        .pairs
        .iter()
        .map(|p| p.pairs_per_s)
        .fold(ceil_max, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption("Uncontended acquire+release pairs/s", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d((1f64..64f64).log_scale(), 0f64..ymax.max(1.0))?;
    chart
        .configure_mesh()
        .x_desc("concurrent clients")
        .y_desc("pairs per second")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    let labels = labels_in_order(r.pairs.iter().map(|p| p.system.label.as_str()));
    for (i, l) in labels.iter().enumerate() {
        let c = color(i);
        let pts: Vec<(f64, f64)> = r
            .pairs
            .iter()
            .filter(|p| p.system.label == *l)
            .map(|p| (p.clients as f64, p.pairs_per_s))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
            .label(*l)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, c.filled())))?;
    }
    if !r.scripts.is_empty() {
        let pts: Vec<(f64, f64)> = r
            .scripts
            .iter()
            .map(|s| (s.clients as f64, s.evalsha_loop_per_s / 2.0))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, BLACK.stroke_width(3)))?
            .label("ceiling: EVALSHA loop / 2")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(3)));
    }
    if let Some(d) = &r.disk {
        let y = d.redb_commits_per_s / 2.0;
        chart
            .draw_series(LineSeries::new(
                vec![(1.0, y), (64.0, y)],
                RGBColor(120, 120, 120).stroke_width(1),
            ))?
            .label("embedded ceiling: redb commits / 2 (one thread)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RGBColor(120, 120, 120)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;
    root.present()?;
    Ok(())
}

fn handoff(r: &Results, path: &Path) -> Plot {
    let root = SVGBackend::new(path, (1100, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    let lo = r
        .handoff
        .iter()
        .filter(|h| h.latency.n > 0)
        .map(|h| h.latency.p50)
        .fold(f64::INFINITY, f64::min)
        .clamp(0.001, 0.1);
    let hi = r.handoff.iter().map(|h| h.latency.p999).fold(1.0, f64::max) * 2.0;
    for (panel, waiters) in panels.iter().zip([16usize, 256]) {
        let rows: Vec<_> = r
            .handoff
            .iter()
            .filter(|h| h.waiters == waiters && h.latency.n > 0)
            .collect();
        let n = rows.len().max(1);
        let names: Vec<String> = rows.iter().map(|h| h.system.label.clone()).collect();
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("Hand-off latency, {waiters} waiters"),
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(45)
            .y_label_area_size(190)
            .build_cartesian_2d((lo * 0.5..hi).log_scale(), -0.5f64..(n as f64 - 0.5))?;
        chart
            .configure_mesh()
            .x_desc("ms (log): ○ p50  △ p99  ✕ p99.9")
            .y_labels(n + 1)
            .y_label_formatter(&|v| {
                let i = v.round();
                if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
                    names[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .x_label_formatter(&|v| {
                if *v < 1.0 {
                    format!("{v:.2}")
                } else {
                    format!("{v:.0}")
                }
            })
            .draw()?;
        for (i, h) in rows.iter().enumerate() {
            let c = color(i);
            let y = i as f64;
            chart.draw_series(LineSeries::new(
                vec![(h.latency.p50, y), (h.latency.p999, y)],
                c.stroke_width(2),
            ))?;
            chart.draw_series(std::iter::once(Circle::new(
                (h.latency.p50, y),
                5,
                c.filled(),
            )))?;
            chart.draw_series(std::iter::once(TriangleMarker::new(
                (h.latency.p99, y),
                7,
                c.filled(),
            )))?;
            chart.draw_series(std::iter::once(Cross::new(
                (h.latency.p999, y),
                6,
                c.stroke_width(2),
            )))?;
        }
    }
    root.present()?;
    Ok(())
}

fn fairness(r: &Results, path: &Path) -> Plot {
    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let series: Vec<(String, Vec<f64>)> = r
        .fairness
        .iter()
        .filter(|f| f.acquisitions > 0)
        .map(|f| {
            let mean = f.acquisitions as f64 / f.counts.len() as f64;
            let mut v: Vec<f64> = f.counts.iter().map(|&c| c as f64 / mean).collect();
            v.sort_by(f64::total_cmp);
            (format!("{} (Jain {:.4})", f.system.label, f.jain), v)
        })
        .collect();
    let n = series.iter().map(|(_, v)| v.len()).max().unwrap_or(1);
    let ymax = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(1.5, f64::max)
        * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Acquisitions per client (sorted), relative to the mean",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..(n as f64 - 1.0).max(1.0), 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc("client, fewest to most acquisitions")
        .y_desc("acquisitions / mean")
        .draw()?;
    for (i, (label, v)) in series.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(
                v.iter().enumerate().map(|(k, y)| (k as f64, *y)),
                c.stroke_width(2),
            ))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;
    root.present()?;
    Ok(())
}

fn scale(r: &Results, path: &Path) -> Plot {
    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let vals = r
        .queue_scale
        .iter()
        .flat_map(|q| [q.enqueue.p50, q.handoff.p50]);
    let lo = vals.clone().fold(f64::INFINITY, f64::min).max(0.001);
    let hi = vals.fold(0.0, f64::max).max(lo * 10.0);
    let dmin = r.queue_scale.iter().map(|q| q.depth).min().unwrap_or(10) as f64;
    let dmax = r.queue_scale.iter().map(|q| q.depth).max().unwrap_or(1000) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Enqueue and hand-off time (p50) by queue length",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (dmin..dmax.max(dmin * 10.0)).log_scale(),
            (lo * 0.5..hi * 2.0).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("queued entries (log)")
        .y_desc("ms (log)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| {
            if *v < 1.0 {
                format!("{v:.3}")
            } else {
                format!("{v:.1}")
            }
        })
        .draw()?;
    let backends = labels_in_order(r.queue_scale.iter().map(|q| q.backend.as_str()));
    let mut k = 0;
    for b in backends {
        for (what, pick) in [
            (
                "enqueue",
                (|q: &crate::results::QueueScaleRow| q.enqueue.p50) as fn(&_) -> f64,
            ),
            ("hand-off", |q| q.handoff.p50),
        ] {
            let c = color(k);
            k += 1;
            let pts: Vec<(f64, f64)> = r
                .queue_scale
                .iter()
                .filter(|q| q.backend == b)
                .map(|q| (q.depth as f64, pick(q).max(lo)))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
                .label(format!("{b}: {what}"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, c.filled())))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;
    root.present()?;
    Ok(())
}
