//! The fault bench's report: per fault and class of call (idempotent or not), what was sent,
//! what failed and with which code, the calls in flight on the faulty replica at the fault, and
//! the recovery time; each run's success rate per 100 ms, as JSON, a table, markdown and a PNG.
//!
//! **Recovery** of a class is read off its timeline of calls by send time, in buckets of
//! [`BUCKET_S`]: from the fault to the start of the first bucket from which every later bucket
//! (that sent a call) succeeds at least as often as the class did before the fault. "Before the
//! fault" is the buckets whose calls had all ended (sent more than a deadline earlier) before it.
//! A class with no such bucket after the fault did not recover within the run (`null`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::Serialize;

use super::load::{Call, CallEnd};
use crate::report::plot::{FONT, register_font};
use crate::report::{PlotError, Table};

/// The width of a timeline bucket, in seconds.
pub const BUCKET_S: f64 = 0.1;

/// One fault's figures for one class of call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultResult {
    /// The fault (`kill`, `hang`, ...).
    pub fault: String,
    /// Whether the calls are idempotent (`ModelMetadata`) or not (`ModelInfer`,
    /// `ModelStreamInfer`).
    pub idempotent: bool,
    /// Calls sent in the run.
    pub sent: u64,
    /// Calls answered in full.
    pub ok: u64,
    /// Calls that failed.
    pub failed: u64,
    /// The failures by gRPC code (`DEADLINE_EXCEEDED` includes the client's own timer).
    pub failed_by_code: BTreeMap<String, u64>,
    /// Calls of every class in flight on the faulty replica when the fault hit, as the gateway's
    /// `GET /endpoints` showed them just before (`null` where no one replica is faulty or the
    /// admin API did not answer).
    pub in_flight_at_fault: Option<u64>,
    /// Seconds from the fault until the class's success rate stayed at its level before the
    /// fault (`null`: not within the run).
    pub recovery_s: Option<f64>,
    /// Calls that were sent more than once (the retrying client of `gateway-restart`).
    pub retried: u64,
}

/// One bucket of a run's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Bucket {
    /// The bucket's start, seconds since the load began.
    pub t: f64,
    /// Idempotent calls sent in it, and how many of them succeeded.
    pub idempotent_sent: u64,
    /// Idempotent calls of the bucket that succeeded.
    pub idempotent_ok: u64,
    /// Non-idempotent calls sent in it.
    pub other_sent: u64,
    /// Non-idempotent calls of the bucket that succeeded.
    pub other_ok: u64,
}

impl Bucket {
    fn of_class(&self, idempotent: bool) -> (u64, u64) {
        if idempotent { (self.idempotent_sent, self.idempotent_ok) } else { (self.other_sent, self.other_ok) }
    }
}

/// One fault's run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultRun {
    /// The fault.
    pub fault: String,
    /// What the bench did, in words.
    pub action: String,
    /// The worker the fault hit (`worker-2`), when it hit one.
    pub faulty_replica: Option<String>,
    /// When the fault hit, seconds since the load began.
    pub fault_at_s: f64,
    /// When the fault was lifted (SIGCONT, the fault switched off), if it was.
    pub lifted_at_s: Option<f64>,
    /// Calls the faulty replica answered (the gateway's `completed`) between the fault's lift and
    /// the end of the load, where there is one faulty replica and a lift.
    pub served_after_lift: Option<u64>,
    /// Calls the faulty replica answered between the fault and the lift (or the end), as the
    /// gateway counts them: how much traffic it still got.
    pub served_while_faulty: Option<u64>,
    /// Attempts the faulty replica failed between the fault and the lift (or the end), as the
    /// gateway counts them: the calls that failed there, whether the gateway retried them
    /// elsewhere (the clients never saw those) or not; not the calls their clients cancelled
    /// (given up on at their deadlines, as under `hang`). How much of the fault the gateway felt.
    pub failed_while_faulty: Option<u64>,
    /// The success rate per [`BUCKET_S`] by send time.
    pub timeline: Vec<Bucket>,
}

/// The report of `switchyard bench faults`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultsReport {
    /// `faults`.
    pub scenario: String,
    /// One row per fault and class.
    pub results: Vec<FaultResult>,
    /// Each fault's run.
    pub runs: Vec<FaultRun>,
    /// Calls a second.
    pub rate: f64,
    /// Seconds of load per fault.
    pub duration_s: f64,
    /// Seconds of load before them (not counted), on each fault's fresh gateway and workers.
    pub warmup_s: f64,
    /// Each call's deadline, milliseconds.
    pub deadline_ms: f64,
    /// The workers.
    pub workers: String,
    /// The gateway's pool, as its config file has it.
    pub gateway_pool: String,
    /// The retries the gateway was asked for (none until its retry layer exists).
    pub gateway_retry: String,
    /// CPUs of the machine.
    pub cpus: usize,
}

/// Sums a run's calls into its two result rows (idempotent first) and its timeline.
pub(crate) fn summarise(
    fault: &str,
    calls: &[Call],
    duration_s: f64,
    fault_at_s: f64,
    deadline_s: f64,
    in_flight_at_fault: Option<u64>,
) -> (Vec<FaultResult>, Vec<Bucket>) {
    let timeline = timeline(calls, duration_s);
    let rows = [true, false]
        .into_iter()
        .map(|idempotent| {
            let of_class = calls.iter().filter(|c| c.shape.idempotent() == idempotent);
            let mut row = FaultResult {
                fault: fault.to_string(),
                idempotent,
                sent: 0,
                ok: 0,
                failed: 0,
                failed_by_code: BTreeMap::new(),
                in_flight_at_fault,
                recovery_s: recovery(&timeline, idempotent, fault_at_s, deadline_s),
                retried: 0,
            };
            for call in of_class {
                row.sent += 1;
                row.retried += u64::from(call.attempts > 1);
                match call.end.code_name() {
                    None => row.ok += 1,
                    Some(code) => {
                        row.failed += 1;
                        *row.failed_by_code.entry(code.to_string()).or_default() += 1;
                    }
                }
            }
            row
        })
        .collect();
    (rows, timeline)
}

/// The calls by send time in buckets of [`BUCKET_S`] over `0..duration_s`.
fn timeline(calls: &[Call], duration_s: f64) -> Vec<Bucket> {
    let n = (duration_s / BUCKET_S).ceil().max(1.0) as usize;
    let mut buckets: Vec<Bucket> = (0..n)
        .map(|i| Bucket { t: (i as f64 * BUCKET_S * 1e3).round() / 1e3, ..Bucket::default() })
        .collect();
    for call in calls {
        let i = ((call.sent_s / BUCKET_S) as usize).min(n - 1);
        let ok = u64::from(call.end == CallEnd::Ok);
        let b = &mut buckets[i];
        if call.shape.idempotent() {
            b.idempotent_sent += 1;
            b.idempotent_ok += ok;
        } else {
            b.other_sent += 1;
            b.other_ok += ok;
        }
    }
    buckets
}

/// The recovery time of a class (see the module docs), `None` when it did not recover.
pub(crate) fn recovery(
    timeline: &[Bucket],
    idempotent: bool,
    fault_at_s: f64,
    deadline_s: f64,
) -> Option<f64> {
    let (mut sent, mut ok) = (0u64, 0u64);
    for b in timeline.iter().filter(|b| b.t + BUCKET_S + deadline_s <= fault_at_s + 1e-9) {
        let (s, o) = b.of_class(idempotent);
        sent += s;
        ok += o;
    }
    let level = if sent == 0 { 1.0 } else { ok as f64 / sent as f64 };
    let at_level = |b: &Bucket| {
        let (s, o) = b.of_class(idempotent);
        s == 0 || o as f64 / s as f64 >= level - 1e-9
    };
    // The bucket the fault falls in, and every one after it.
    let first = timeline.iter().position(|b| b.t + BUCKET_S > fault_at_s + 1e-9)?;
    let mut recovered_from = None;
    for (i, b) in timeline.iter().enumerate().skip(first).rev() {
        if !at_level(b) {
            break;
        }
        recovered_from = Some(i);
    }
    recovered_from.map(|i| ((timeline[i].t - fault_at_s).max(0.0) * 1e3).round() / 1e3)
}

/// The target for a row: zero failed idempotent calls; non-idempotent failures no more
/// than those in flight on the faulty replica; recovery within 1 s (`hang`: the deadline + 1 s).
pub fn verdicts(row: &FaultResult, deadline_s: f64) -> (bool, bool) {
    let failures_met =
        if row.idempotent { row.failed == 0 } else { row.failed <= row.in_flight_at_fault.unwrap_or(0) };
    let bound = if row.fault == "hang" { deadline_s + 1.0 } else { 1.0 };
    let recovery_met = row.recovery_s.is_some_and(|r| r <= bound + 1e-9);
    (failures_met, recovery_met)
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "not met" }
}

impl FaultsReport {
    /// The results as a table.
    pub fn table(&self) -> Table {
        let mut table = Table::new([
            "fault",
            "idempotent",
            "sent",
            "ok",
            "failed",
            "failed by code",
            "in flight at fault",
            "recovery (s)",
            "failures target",
            "recovery target",
        ]);
        let deadline_s = self.deadline_ms / 1e3;
        for row in &self.results {
            let (failures, recovery) = verdicts(row, deadline_s);
            let codes: Vec<String> = row.failed_by_code.iter().map(|(c, n)| format!("{c} {n}")).collect();
            table.row([
                row.fault.clone(),
                if row.idempotent { "yes" } else { "no" }.to_string(),
                row.sent.to_string(),
                row.ok.to_string(),
                row.failed.to_string(),
                if codes.is_empty() { "-".to_string() } else { codes.join(", ") },
                row.in_flight_at_fault.map_or("-".to_string(), |n| n.to_string()),
                row.recovery_s.map_or("not in the run".to_string(), |r| format!("{r:.1}")),
                met(failures).to_string(),
                met(recovery).to_string(),
            ]);
        }
        table
    }

    /// The printed summary.
    pub fn summary(&self) -> String {
        format!(
            "faults: {} calls/s for {} s per fault after {} s of warm-up, deadline {} ms, gateway retries: {}\n{}",
            self.rate,
            self.duration_s,
            self.warmup_s,
            self.deadline_ms,
            self.gateway_retry,
            self.table()
        )
    }

    /// The markdown report: the setup, the table against the targets, and a reading per fault.
    pub fn markdown(&self) -> String {
        let mut md = String::from("# Fault suite: `switchyard bench faults`\n\n");
        md.push_str(&format!(
            "Command: `switchyard bench faults --rate {} --duration {} --warmup {} --json \
             reports/bench/faults.json` (release build), on {} CPUs shared with other work.\n\n",
            self.rate, self.duration_s, self.warmup_s, self.cpus
        ));
        md.push_str(&format!(
            "Setup: {}; the gateway as its own process, its pool `{}` fed by file discovery; gateway \
             retries: {}. Load: {} calls/s at even spacing, in turn `ModelMetadata` (unary, a read: \
             the idempotent calls), `ModelInfer` (unary) and `ModelStreamInfer` (one request, a \
             response per token), each with a deadline of {} ms (`grpc-timeout` and the client's \
             own timer). One fault per run, on the replica with the most calls in flight at the \
             moment (least response time may leave one idle at this load); every call's outcome \
             is kept, by send time in buckets of {} ms.\n\n",
            self.workers,
            self.gateway_pool,
            self.gateway_retry,
            self.rate,
            self.deadline_ms,
            BUCKET_S * 1e3
        ));
        md.push_str(
            "Targets (issue 24): zero failed idempotent calls; non-idempotent failures no more than \
             the calls in flight on the faulty replica at the fault; recovery within 1 s (`hang`: \
             the deadline + 1 s). `in flight at fault` counts the calls of every class on the \
             replica (the gateway's `GET /endpoints`), so it bounds the non-idempotent ones from \
             above.\n\n",
        );
        md.push_str("| fault | idempotent | sent | ok | failed | failed by code | in flight at fault | recovery (s) | failures | recovery |\n");
        md.push_str("| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | --- | --- |\n");
        let deadline_s = self.deadline_ms / 1e3;
        for row in &self.results {
            let (failures, recovery) = verdicts(row, deadline_s);
            let codes: Vec<String> = row.failed_by_code.iter().map(|(c, n)| format!("{c} {n}")).collect();
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                row.fault,
                if row.idempotent { "yes" } else { "no" },
                row.sent,
                row.ok,
                row.failed,
                if codes.is_empty() { "-".to_string() } else { codes.join(", ") },
                row.in_flight_at_fault.map_or("-".to_string(), |n| n.to_string()),
                row.recovery_s.map_or("not in the run".to_string(), |r| format!("{r:.1}")),
                met(failures),
                met(recovery),
            ));
        }
        md.push_str("\n## Reading, fault by fault\n\n");
        for run in &self.runs {
            let rows: Vec<&FaultResult> = self.results.iter().filter(|r| r.fault == run.fault).collect();
            let class = |idempotent: bool| {
                rows.iter().find(|r| r.idempotent == idempotent).map_or(String::new(), |r| {
                    let codes: Vec<String> =
                        r.failed_by_code.iter().map(|(c, n)| format!("{c} {n}")).collect();
                    format!(
                        "{} of {} failed{}, recovery {}",
                        r.failed,
                        r.sent,
                        if codes.is_empty() { String::new() } else { format!(" ({})", codes.join(", ")) },
                        r.recovery_s.map_or("not within the run".to_string(), |s| format!("{s:.2} s")),
                    )
                })
            };
            let in_flight = rows.first().and_then(|r| r.in_flight_at_fault);
            md.push_str(&format!(
                "- `{}` (fault at {:.2} s{}): {}. Idempotent calls: {}. Non-idempotent calls: {}.{}{}{} \
                 Plot: `faults-{}.png`.\n",
                run.fault,
                run.fault_at_s,
                run.lifted_at_s.map_or(String::new(), |t| format!(", lifted at {t:.2} s")),
                run.action,
                class(true),
                class(false),
                in_flight.map_or(String::new(), |n| {
                    let on = match run.fault.as_str() {
                        "flap" => "on the endpoints as they were taken out, summed",
                        "gateway-restart" => "on the gateway",
                        _ => "on the faulty replica",
                    };
                    format!(" Calls in flight {on}: {n}.")
                }),
                run.served_while_faulty.map_or(String::new(), |n| {
                    let failed = run.failed_while_faulty.map_or(String::new(), |f| {
                        let reads = if f > 0 { ", the reads among them retried elsewhere" } else { "" };
                        format!(" and failed {f} attempts (cancellations not counted: a call its client gave up on at its deadline is one{reads})")
                    });
                    format!(" The faulty replica completed {n} calls{failed} while faulty.")
                }),
                run.served_after_lift.map_or(String::new(), |n| format!(" It completed {n} after the lift.")),
                run.fault,
            ));
        }
        md
    }
}

/// Where a fault's plot goes beside the JSON report `json`: `faults.json` → `faults-kill.png`.
pub fn plot_path(json: &Path, fault: &str) -> PathBuf {
    let stem = json.file_stem().map_or_else(|| "faults".into(), |s| s.to_string_lossy().into_owned());
    json.with_file_name(format!("{stem}-{fault}.png"))
}

/// Draws a run's success rate per bucket, both classes, with the fault (and its lift) marked.
pub fn plot(path: &Path, run: &FaultRun) -> Result<(), PlotError> {
    register_font()?;
    let file = path.display().to_string();
    let err = |e: DrawingAreaErrorKind<_>| PlotError::new(file.clone(), e);
    let root = BitMapBackend::new(path, (1200, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let span = run.timeline.last().map_or(1.0, |b| b.t + BUCKET_S);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("fault {}: success rate per {} ms by send time", run.fault, BUCKET_S * 1e3),
            (FONT, 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..span, 0f64..105f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("send time (s)")
        .y_desc("success (%)")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .draw()
        .map_err(err)?;
    let series = |idempotent: bool| {
        run.timeline
            .iter()
            .filter_map(move |b| {
                let (s, o) = b.of_class(idempotent);
                (s > 0).then(|| (b.t + BUCKET_S / 2.0, 100.0 * o as f64 / s as f64))
            })
            .collect::<Vec<_>>()
    };
    let blue = ShapeStyle::from(&BLUE).stroke_width(2);
    let red = ShapeStyle::from(&RED).stroke_width(2);
    chart
        .draw_series(LineSeries::new(series(true), blue))
        .map_err(err)?
        .label("idempotent (ModelMetadata)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue));
    chart
        .draw_series(LineSeries::new(series(false), red))
        .map_err(err)?
        .label("non-idempotent (ModelInfer, ModelStreamInfer)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], red));
    let mark = ShapeStyle::from(&BLACK).stroke_width(1);
    let mut marks = vec![run.fault_at_s];
    marks.extend(run.lifted_at_s);
    chart
        .draw_series(marks.into_iter().map(|t| PathElement::new(vec![(t, 0.0), (t, 105.0)], mark)))
        .map_err(err)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::super::load::CallShape;
    use super::*;

    fn call(sent_s: f64, shape: CallShape, ok: bool) -> Call {
        let end = if ok { CallEnd::Ok } else { CallEnd::Failed(tonic::Code::Unavailable) };
        Call { sent_s, shape, end, attempts: 1 }
    }

    #[test]
    fn recovery_is_the_first_bucket_from_which_the_rate_stays_at_its_level() {
        // 10 calls a bucket over 3 s; the fault at 1.0 s; non-idempotent calls fail in
        // 1.0..1.35 and once more at 1.62; idempotent ones never.
        let mut calls = Vec::new();
        for i in 0..300 {
            let t = i as f64 / 100.0;
            let failing = (1.0..1.35).contains(&t) || (t - 1.62).abs() < 1e-9;
            calls.push(call(t, CallShape::Infer, !failing));
            calls.push(call(t, CallShape::Metadata, true));
        }
        let (rows, timeline) = summarise("kill", &calls, 3.0, 1.0, 0.5, Some(3));
        assert_eq!(timeline.len(), 30);
        assert_eq!(rows[0].recovery_s, Some(0.0), "idempotent calls never failed");
        assert_eq!(rows[0].failed, 0);
        assert_eq!(rows[1].failed, 36);
        assert_eq!(rows[1].failed_by_code.get("UNAVAILABLE"), Some(&36));
        assert_eq!(rows[1].recovery_s, Some(0.7), "the bucket after the one of 1.62 s");
        let (failures, recovery) = verdicts(&rows[1], 0.5);
        assert!(!failures && recovery);
    }

    #[test]
    fn a_class_failing_to_the_end_did_not_recover() {
        let calls: Vec<Call> = (0..100).map(|i| call(i as f64 / 50.0, CallShape::Metadata, i < 60)).collect();
        let (rows, _) = summarise("hang", &calls, 2.0, 1.0, 0.2, None);
        assert_eq!(rows[0].recovery_s, None);
        assert_eq!(verdicts(&rows[0], 0.2), (false, false));
    }
}
