//! `OUT/timeline.svg`: faults, leader changes, completed checkpoint ids and committed throughput
//! on one time axis, so a reader sees what each fault did.

use std::fmt::Write;

use crate::checkpoints::CheckpointObservation;
use crate::report::{FaultRecord, LeaderObservation, ThroughputSample};
use crate::schedule::FaultKind;

const WIDTH: f64 = 1_000.0;
const LEFT: f64 = 110.0;
const ROW: f64 = 120.0;

fn colour(kind: FaultKind) -> &'static str {
    match kind {
        FaultKind::Kill => "#d62728",
        FaultKind::Pause => "#ff7f0e",
        FaultKind::RestartAll => "#9467bd",
        FaultKind::Partition => "#8c564b",
        FaultKind::Delay => "#17becf",
        FaultKind::Rescale => "#2ca02c",
        FaultKind::Drain => "#bcbd22",
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Renders the timeline; `end_s` is the run's length.
pub fn render(
    faults: &[FaultRecord],
    leaders: &[LeaderObservation],
    polls: &[CheckpointObservation],
    throughput: &[ThroughputSample],
    end_s: f64,
) -> String {
    let end_s = end_s.max(1.0);
    let x = |seconds: f64| LEFT + (seconds / end_s).clamp(0.0, 1.0) * (WIDTH - LEFT - 20.0);
    let height = 4.0 * ROW + 40.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let labels = ["faults", "leader", "checkpoint id", "records/s"];
    for (row, label) in labels.iter().enumerate() {
        let top = 10.0 + row as f64 * ROW;
        let _ = writeln!(svg, r#"<text x="5" y="{}">{label}</text>"#, top + ROW / 2.0);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{0}" x2="{1}" y2="{0}" stroke="#ccc"/>"##,
            top + ROW - 10.0,
            WIDTH - 20.0
        );
    }
    // Faults: one bar each, labelled with the target.
    for (position, fault) in faults.iter().enumerate() {
        let (start, end) = (fault.started_us as f64 / 1e6, fault.healed_us as f64 / 1e6);
        let top = 15.0 + (position % 4) as f64 * 24.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{:.1}" y="{top}" width="{:.1}" height="14" fill="{}" opacity="0.7"><title>{} {} {:.1}-{:.1} s</title></rect>"#,
            x(start),
            (x(end) - x(start)).max(1.0),
            colour(fault.kind),
            fault.kind.name(),
            escape(&fault.target),
            start,
            end
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}">{} {}</text>"#,
            x(start),
            top + 11.0,
            fault.kind.name(),
            escape(&fault.target)
        );
    }
    // Leader: a step line over node ids.
    let leader_top = 10.0 + ROW;
    let max_node = leaders.iter().filter_map(|seen| seen.leader).max().unwrap_or(1).max(1) as f64;
    let leader_y = |leader: Option<u64>| match leader {
        Some(node) => leader_top + ROW - 10.0 - node as f64 / max_node * (ROW - 30.0),
        None => leader_top + ROW - 10.0,
    };
    let mut previous: Option<Option<u64>> = None;
    for seen in leaders {
        if previous != Some(seen.leader) {
            let at = x(seen.at_us as f64 / 1e6);
            let label = seen.leader.map_or("none".to_owned(), |node| format!("{node}"));
            let _ = writeln!(
                svg,
                r##"<circle cx="{at:.1}" cy="{:.1}" r="3" fill="#1f77b4"/><text x="{:.1}" y="{:.1}">{label}</text>"##,
                leader_y(seen.leader),
                at + 4.0,
                leader_y(seen.leader) - 4.0
            );
            previous = Some(seen.leader);
        }
    }
    // Checkpoint ids and throughput: polylines.
    let newest: Vec<(f64, f64)> = polls
        .iter()
        .filter_map(|poll| Some((poll.at_us as f64 / 1e6, *poll.completed.iter().max()? as f64)))
        .collect();
    let rates: Vec<(f64, f64)> = throughput
        .iter()
        .map(|sample| (sample.at_s, sample.records_per_s))
        .collect();
    for (row, points) in [(2.0, &newest), (3.0, &rates)] {
        let top = 10.0 + row * ROW;
        let highest = points.iter().map(|(_, value)| *value).fold(1.0, f64::max);
        let path: Vec<String> = points
            .iter()
            .map(|(at, value)| format!("{:.1},{:.1}", x(*at), top + ROW - 10.0 - value / highest * (ROW - 30.0)))
            .collect();
        let _ = writeln!(
            svg,
            r##"<polyline points="{}" fill="none" stroke="#2ca02c"/><text x="{LEFT}" y="{}">max {highest:.0}</text>"##,
            path.join(" "),
            top + 12.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="{}">0 s</text><text x="{}" y="{}">{end_s:.0} s</text>"#,
        height - 8.0,
        WIDTH - 60.0,
        height - 8.0
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_shows_every_fault_and_leader_change() {
        let faults = vec![FaultRecord {
            kind: FaultKind::Kill,
            target: "leader node 2".into(),
            started_us: 5_000_000,
            healed_us: 6_000_000,
        }];
        let leaders = vec![
            LeaderObservation {
                at_us: 0,
                leader: Some(2),
                term: None,
            },
            LeaderObservation {
                at_us: 5_100_000,
                leader: None,
                term: None,
            },
            LeaderObservation {
                at_us: 5_400_000,
                leader: Some(3),
                term: None,
            },
        ];
        let svg = render(&faults, &leaders, &[], &[], 10.0);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("kill leader node 2"));
        assert_eq!(svg.matches("<circle").count(), 3, "three leader states");
    }
}
