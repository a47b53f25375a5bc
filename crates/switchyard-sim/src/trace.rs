//! Workload traces: request arrivals with prompt and output lengths, read from the public LLM
//! serving traces bundled in the repository's `traces/` folder.
//!
//! - **Azure LLM inference trace 2023** (`azure_llm_2023_conv.csv`, Patel et al., "Splitwise",
//!   ISCA 2024; CC-BY): CSV with header `TIMESTAMP,ContextTokens,GeneratedTokens`, timestamps
//!   like `2023-11-16 18:15:46.6805900`. Columns are found by name, so extra columns are fine.
//!   The trace has no prefix information: [`TraceRecord::prefix`] is empty.
//! - **Mooncake conversation trace** (`mooncake_conversation.jsonl`, kvcache-ai/Mooncake,
//!   FAST'25; Apache-2.0): one JSON object per line, `{"timestamp": ms, "input_length": n,
//!   "output_length": n, "hash_ids": [..]}`, where `hash_ids` name the prompt's 512-token blocks
//!   (identical ids mean shareable KV-cache blocks).
//!
//! Records come back sorted by arrival (a stable sort, so ties keep file order) with
//! [`TraceRecord::at`] measured from the earliest. Blank lines are skipped. A count of zero
//! prompt or output tokens is read as 1, since every request needs a prompt token and produces
//! a token. Errors name the 1-based line (the CSV header is line 1).

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

use switchyard_core::PrefixBlocks;

use crate::service::GenerationRequest;

/// One request of a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceRecord {
    /// Arrival, from the trace's first arrival.
    pub at: Duration,
    /// Prompt tokens (at least 1).
    pub prompt_tokens: u32,
    /// Output tokens (at least 1).
    pub output_tokens: u32,
    /// The prompt's KV block identities (Mooncake `hash_ids`); empty when the trace has none.
    pub prefix: PrefixBlocks,
}

impl From<&TraceRecord> for GenerationRequest {
    fn from(r: &TraceRecord) -> Self {
        GenerationRequest {
            prompt_tokens: r.prompt_tokens,
            max_tokens: r.output_tokens,
            prefix: r.prefix.clone(),
            deadline: None,
            output_tokens: None,
        }
    }
}

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// A line that is not a valid record (or header).
    #[error("line {line}: {message}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// Reading failed part way.
    #[error("line {line}: {source}")]
    Io {
        /// 1-based number of the line being read.
        line: usize,
        /// The I/O error.
        source: io::Error,
    },
    /// The trace holds no record.
    #[error("the trace has no records")]
    Empty,
    /// The file could not be opened.
    #[error("{}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file's extension names no known format.
    #[error(
        "{}: unknown trace format: expected a .csv (Azure LLM trace) or .jsonl/.json (Mooncake trace) file",
        path.display()
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// An error in a named file.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What went wrong in it.
        source: Box<TraceError>,
    },
}

fn line_error(line: usize, message: impl Into<String>) -> TraceError {
    TraceError::Line { line, message: message.into() }
}

/// The trace formats this module reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceFormat {
    /// Azure LLM inference trace CSV.
    AzureCsv,
    /// Mooncake JSON lines.
    MooncakeJsonl,
}

impl TraceFormat {
    /// The format a file's extension names: `.csv` is Azure, `.jsonl` or `.json` is Mooncake
    /// (case-insensitive).
    pub fn from_path(path: &Path) -> Option<TraceFormat> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(TraceFormat::AzureCsv),
            "jsonl" | "json" => Some(TraceFormat::MooncakeJsonl),
            _ => None,
        }
    }

    /// Reads a trace of this format.
    pub fn read(self, input: impl BufRead) -> Result<Vec<TraceRecord>, TraceError> {
        match self {
            TraceFormat::AzureCsv => read_azure_csv(input),
            TraceFormat::MooncakeJsonl => read_mooncake_jsonl(input),
        }
    }
}

/// Reads the trace at `path`, in the format its extension names; errors name the path.
pub fn read_trace(path: &Path) -> Result<Vec<TraceRecord>, TraceError> {
    let format =
        TraceFormat::from_path(path).ok_or_else(|| TraceError::UnknownFormat { path: path.to_path_buf() })?;
    let file = File::open(path).map_err(|source| TraceError::Open { path: path.to_path_buf(), source })?;
    format
        .read(BufReader::new(file))
        .map_err(|e| TraceError::InFile { path: path.to_path_buf(), source: Box::new(e) })
}

/// Reads the Azure LLM inference trace CSV (see the [module docs](self)).
pub fn read_azure_csv(input: impl BufRead) -> Result<Vec<TraceRecord>, TraceError> {
    let mut columns: Option<[usize; 3]> = None;
    let mut rows = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|source| TraceError::Io { line: n, source })?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let Some([ts, ctx, gen_col]) = columns else {
            let find = |name: &str| {
                fields
                    .iter()
                    .position(|f| f.eq_ignore_ascii_case(name))
                    .ok_or_else(|| line_error(n, format!("header has no {name} column")))
            };
            columns = Some([find("TIMESTAMP")?, find("ContextTokens")?, find("GeneratedTokens")?]);
            continue;
        };
        let field = |idx: usize, name: &str| {
            fields.get(idx).copied().ok_or_else(|| {
                line_error(
                    n,
                    format!("missing {name} column (expected {} columns)", ts.max(ctx).max(gen_col) + 1),
                )
            })
        };
        let at = parse_timestamp(field(ts, "TIMESTAMP")?).map_err(|m| line_error(n, m))?;
        let prompt =
            parse_count(field(ctx, "ContextTokens")?, "ContextTokens").map_err(|m| line_error(n, m))?;
        let output = parse_count(field(gen_col, "GeneratedTokens")?, "GeneratedTokens")
            .map_err(|m| line_error(n, m))?;
        rows.push((at, prompt, output, PrefixBlocks::default()));
    }
    if columns.is_none() {
        return Err(TraceError::Empty);
    }
    finish(rows)
}

#[derive(serde::Deserialize)]
struct MooncakeLine {
    timestamp: serde_json::Number,
    input_length: u32,
    output_length: u32,
    #[serde(default)]
    hash_ids: Vec<u64>,
}

/// Reads the Mooncake JSON-lines trace (see the [module docs](self)).
pub fn read_mooncake_jsonl(input: impl BufRead) -> Result<Vec<TraceRecord>, TraceError> {
    let mut rows = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|source| TraceError::Io { line: n, source })?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let rec: MooncakeLine = serde_json::from_str(line).map_err(|e| line_error(n, e.to_string()))?;
        let at = millis_to_nanos(&rec.timestamp).map_err(|m| line_error(n, m))?;
        rows.push((at, rec.input_length, rec.output_length, PrefixBlocks::new(rec.hash_ids)));
    }
    finish(rows)
}

/// A timestamp in ms (integer exactly, or fractional) as nanoseconds.
fn millis_to_nanos(ms: &serde_json::Number) -> Result<i128, String> {
    if let Some(ms) = ms.as_u64() {
        return Ok(i128::from(ms) * 1_000_000);
    }
    match ms.as_f64() {
        Some(v) if (0.0..1e15).contains(&v) => Ok((v * 1e6).round() as i128),
        _ => Err(format!("timestamp must be a non-negative number of milliseconds, got {ms}")),
    }
}

/// Sorts by arrival (stably), measures from the first, clamps counts to at least 1.
fn finish(mut rows: Vec<(i128, u32, u32, PrefixBlocks)>) -> Result<Vec<TraceRecord>, TraceError> {
    rows.sort_by_key(|r| r.0);
    let first = rows.first().ok_or(TraceError::Empty)?.0;
    Ok(rows
        .into_iter()
        .map(|(at, prompt, output, prefix)| TraceRecord {
            at: Duration::from_nanos(u64::try_from(at - first).unwrap_or(u64::MAX)),
            prompt_tokens: prompt.max(1),
            output_tokens: output.max(1),
            prefix,
        })
        .collect())
}

fn parse_count(s: &str, name: &str) -> Result<u32, String> {
    s.parse::<u32>().map_err(|_| format!("{name} must be a whole number of tokens, got {s:?}"))
}

/// `YYYY-MM-DD HH:MM:SS[.fraction]` (or with `T`) as nanoseconds since the Unix epoch, UTC.
/// Up to nine fractional digits, kept exactly.
fn parse_timestamp(s: &str) -> Result<i128, String> {
    let bad = |why: &str| format!("bad TIMESTAMP {s:?}: {why} (expected YYYY-MM-DD HH:MM:SS.fraction)");
    let (date, time) = s.split_once([' ', 'T']).ok_or_else(|| bad("no time"))?;
    let mut d = date.splitn(3, '-');
    let num = |part: Option<&str>, what: &str| -> Result<i64, String> {
        let part = part.ok_or_else(|| bad(&format!("no {what}")))?;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) || part.len() > 4 {
            return Err(bad(&format!("{what} {part:?} is not a number")));
        }
        part.parse().map_err(|_| bad(&format!("{what} {part:?} is not a number")))
    };
    let (year, month, day) = (num(d.next(), "year")?, num(d.next(), "month")?, num(d.next(), "day")?);
    if !(1..=12).contains(&month) {
        return Err(bad(&format!("month {month} out of range")));
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err(bad(&format!("day {day} out of range")));
    }
    let (clock, fraction) = match time.split_once('.') {
        Some((c, f)) => (c, f),
        None => (time, ""),
    };
    let mut t = clock.splitn(3, ':');
    let (hour, minute, second) = (num(t.next(), "hour")?, num(t.next(), "minute")?, num(t.next(), "second")?);
    if hour > 23 || minute > 59 || second > 59 {
        return Err(bad("time of day out of range"));
    }
    if fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("fraction of a second must be at most 9 digits"));
    }
    let mut nanos: i128 = 0;
    for (i, b) in fraction.bytes().enumerate() {
        nanos += i128::from(b - b'0') * 10i128.pow(8 - i as u32);
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Ok(i128::from(secs) * 1_000_000_000 + nanos)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const AZURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../traces/azure_llm_2023_conv.csv");
    const MOONCAKE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../traces/mooncake_conversation.jsonl");

    #[test]
    fn reads_the_bundled_azure_trace() {
        let records = read_trace(Path::new(AZURE)).unwrap();
        assert_eq!(records.len(), 19_366);
        assert_eq!(records[0].at, Duration::ZERO);
        assert_eq!((records[0].prompt_tokens, records[0].output_tokens), (374, 44));
        // 18:15:46.6805900 -> 18:15:50.9951690, exactly.
        assert_eq!(records[1].at, Duration::from_nanos(4_314_579_000));
        let last = records.last().unwrap().at;
        assert!(last > Duration::from_secs(55 * 60) && last < Duration::from_secs(65 * 60), "{last:?}");
        assert!(records.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(records.iter().all(|r| r.prefix.is_empty() && r.output_tokens >= 1));
    }

    #[test]
    fn reads_the_bundled_mooncake_trace() {
        let records = read_trace(Path::new(MOONCAKE)).unwrap();
        assert_eq!(records.len(), 12_031);
        assert_eq!(records[0].at, Duration::ZERO);
        assert_eq!((records[0].prompt_tokens, records[0].output_tokens), (6758, 500));
        assert_eq!(records[0].prefix.len(), 14);
        let last = records.last().unwrap().at;
        assert_eq!(last, Duration::from_millis(3_536_999));
        assert!(records.iter().all(|r| !r.prefix.is_empty()));
    }

    #[test]
    fn timestamps_are_exact() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00").unwrap(), 0);
        assert_eq!(parse_timestamp("1970-01-02 00:00:01.5").unwrap(), 86_401_500_000_000);
        assert_eq!(parse_timestamp("2000-03-01 00:00:00").unwrap(), 951_868_800 * 1_000_000_000);
        assert_eq!(parse_timestamp("2024-02-29T12:00:00.000000001").unwrap() % 1_000_000_000, 1);
        for bad in ["2023-02-29 00:00:00", "2023-13-01 00:00:00", "2023-11-16", "2023-11-16 25:00:00", "x"] {
            assert!(parse_timestamp(bad).is_err(), "{bad}");
        }
    }

    fn azure_err(body: &str) -> String {
        read_azure_csv(format!("TIMESTAMP,ContextTokens,GeneratedTokens\n{body}").as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn malformed_azure_lines_name_their_line() {
        let ok = "2023-11-16 18:15:46.68,374,44\n";
        let e = azure_err(&format!("{ok}2023-11-16 18:15:47.1,abc,44\n"));
        assert!(e.starts_with("line 3: ContextTokens must be a whole number"), "{e}");
        let e = azure_err(&format!("{ok}{ok}2023-11-16 18:15:47.1,374\n"));
        assert!(e.starts_with("line 4: missing GeneratedTokens column"), "{e}");
        let e = azure_err("2023-11-16 18:61:47.1,374,4\n");
        assert!(e.starts_with("line 2: bad TIMESTAMP"), "{e}");
        let e = read_azure_csv("TIME,ContextTokens,GeneratedTokens\n".as_bytes()).unwrap_err().to_string();
        assert_eq!(e, "line 1: header has no TIMESTAMP column");
        assert!(matches!(
            read_azure_csv("TIMESTAMP,ContextTokens,GeneratedTokens\n".as_bytes()),
            Err(TraceError::Empty)
        ));
        assert!(matches!(read_azure_csv("".as_bytes()), Err(TraceError::Empty)));
    }

    #[test]
    fn malformed_mooncake_lines_name_their_line() {
        let ok = r#"{"timestamp": 5, "input_length": 10, "output_length": 0, "hash_ids": [1]}"#;
        let e = read_mooncake_jsonl(format!("{ok}\n{{\"timestamp\": 1,").as_bytes()).unwrap_err().to_string();
        assert!(e.starts_with("line 2: "), "{e}");
        let e =
            read_mooncake_jsonl(format!("{ok}\n\n{{\"timestamp\": 1}}").as_bytes()).unwrap_err().to_string();
        assert!(e.starts_with("line 3: missing field `input_length`"), "{e}");
        let e = read_mooncake_jsonl(r#"{"timestamp": -1, "input_length": 1, "output_length": 1}"#.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("line 1: timestamp must be a non-negative"), "{e}");
        let records = read_mooncake_jsonl(
            format!("{ok}\n{}", r#"{"timestamp": 2.5, "input_length": 3, "output_length": 4}"#).as_bytes(),
        )
        .unwrap();
        assert_eq!(records[0].at, Duration::ZERO, "sorted by time");
        assert_eq!(records[1].at, Duration::from_micros(2500));
        assert_eq!(records[1].output_tokens, 1, "zero output tokens read as 1");
    }

    #[test]
    fn formats_follow_the_extension() {
        assert_eq!(TraceFormat::from_path(Path::new("a/b.CSV")), Some(TraceFormat::AzureCsv));
        assert_eq!(TraceFormat::from_path(Path::new("b.jsonl")), Some(TraceFormat::MooncakeJsonl));
        assert_eq!(TraceFormat::from_path(Path::new("b.txt")), None);
        let e = read_trace(Path::new("nowhere.txt")).unwrap_err().to_string();
        assert!(e.starts_with("nowhere.txt: unknown trace format"), "{e}");
        let e = read_trace(Path::new("/nonexistent/t.csv")).unwrap_err().to_string();
        assert!(e.starts_with("/nonexistent/t.csv: "), "{e}");
    }
}
