//! Rendering: aligned tables and `key: value` blocks for people, proto3 JSON for scripts.
//!
//! Human output may change between releases; `--json` output is the proto3-JSON mapping of the
//! response message (lowerCamelCase field names, 64-bit integers as strings, default values
//! omitted) and only grows by new fields.

use std::io::{self, Write as _};

use anyhow::Context as _;
use serde::Serialize;

/// Shown in place of an empty cell or value.
pub(crate) const EMPTY: &str = "-";

/// Spaces between two table columns.
const GAP: usize = 2;

/// A table with a header row; columns are as wide as their widest cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers and no rows.
    pub(crate) fn new<I, S>(headers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row. Empty cells show as `-`; missing cells are filled, extra cells kept.
    pub(crate) fn row<I, S>(&mut self, cells: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let row = cells
            .into_iter()
            .map(Into::into)
            .map(|c: String| if c.is_empty() { EMPTY.to_owned() } else { c })
            .collect();
        self.rows.push(row);
        self
    }

    /// Number of rows (header excluded).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// The table as text: one line per row, columns separated by two spaces, no trailing
    /// spaces, ending in a newline.
    pub(crate) fn render(&self) -> String {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain(std::iter::once(self.headers.len()))
            .max()
            .unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            for (i, cell) in line.iter().enumerate() {
                widths[i] = widths[i].max(width(cell));
            }
        }
        let mut out = String::new();
        for (n, line) in std::iter::once(&self.headers).chain(&self.rows).enumerate() {
            let missing = if n == 0 { "" } else { EMPTY };
            let mut text = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = line.get(i).map_or(missing, String::as_str);
                text.push_str(cell);
                if i + 1 < columns {
                    text.extend(std::iter::repeat_n(' ', w - width(cell) + GAP));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Display width of a cell (one column per `char`; CLADNet data is ASCII).
fn width(s: &str) -> usize {
    s.chars().count()
}

/// A `key: value` block with the values aligned; empty values show as `-`.
pub(crate) fn key_values(pairs: &[(&str, String)]) -> String {
    let key_width = pairs.iter().map(|(k, _)| width(k) + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let value = if value.is_empty() { EMPTY } else { value };
        let label = format!("{key}:");
        out.push_str(&format!("{label:<key_width$}  {value}\n"));
    }
    out
}

/// Joins a list for one cell or value: `a, b, c`, or empty for an empty list.
pub(crate) fn list(items: &[String]) -> String {
    items.join(", ")
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (UTC); `0` means "never" (or "unknown").
pub(crate) fn unix_time(secs: i64, zero: &str) -> String {
    if secs == 0 {
        return zero.to_owned();
    }
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Writes `text` to stdout. A closed pipe (`cladnet network list | head -1`) is not an error.
pub(crate) fn print_text(text: &str) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}

/// The proto3 JSON of a response message, pretty-printed, with a final newline.
pub(crate) fn to_json<M: Serialize>(message: &M) -> anyhow::Result<String> {
    let mut s = serde_json::to_string_pretty(message).context("encoding the response as JSON")?;
    s.push('\n');
    Ok(s)
}

/// Prints a response: its proto3 JSON with `--json`, else what `human` renders.
pub(crate) fn emit<M: Serialize>(
    json: bool,
    message: &M,
    human: impl FnOnce(&M) -> String,
) -> anyhow::Result<()> {
    let text = if json {
        to_json(message)?
    } else {
        human(message)
    };
    print_text(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_trims() {
        let mut t = Table::new(["ID", "NAME", "CIDR"]);
        t.row(["net-1", "alpha", "10.77.0.0/24"]);
        t.row(["n2", "", "10.0.0.0/8"]);
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.render(),
            "ID     NAME   CIDR\n\
             net-1  alpha  10.77.0.0/24\n\
             n2     -      10.0.0.0/8\n"
        );
    }

    #[test]
    fn table_header_wider_than_cells_and_last_column_unpadded() {
        let mut t = Table::new(["HOST ID", "X"]);
        t.row(["a", "long value"]);
        t.row(["b", "v"]);
        let out = t.render();
        assert_eq!(out, "HOST ID  X\na        long value\nb        v\n");
        assert!(out.lines().all(|l| !l.ends_with(' ')));
    }

    #[test]
    fn table_ragged_rows_and_empty_table() {
        let mut t = Table::new(["A", "B", "C"]);
        t.row(["1"]);
        t.row(["1", "2", "3", "4"]);
        assert_eq!(t.render(), "A  B  C\n1  -  -  -\n1  2  3  4\n");
        assert_eq!(Table::new(["ONLY"]).render(), "ONLY\n");
    }

    #[test]
    fn table_counts_chars_not_bytes() {
        let mut t = Table::new(["N", "X"]);
        t.row(["é", "1"]);
        assert_eq!(t.render(), "N  X\né  1\n");
    }

    #[test]
    fn key_values_align() {
        let out = key_values(&[
            ("ID", "net-1".into()),
            ("Address space", "10.77.0.0/24".into()),
            ("Description", String::new()),
        ]);
        assert_eq!(
            out,
            "ID:             net-1\n\
             Address space:  10.77.0.0/24\n\
             Description:    -\n"
        );
    }

    #[test]
    fn unix_time_formats_utc() {
        assert_eq!(unix_time(0, "never"), "never");
        assert_eq!(unix_time(1, "never"), "1970-01-01T00:00:01Z");
        assert_eq!(unix_time(951_782_400, "-"), "2000-02-29T00:00:00Z");
        assert_eq!(unix_time(1_700_000_000, "-"), "2023-11-14T22:13:20Z");
        assert_eq!(unix_time(-86_400, "-"), "1969-12-31T00:00:00Z");
    }

    #[test]
    fn json_is_proto3_camel_case() {
        let n = cladnet_proto::v1::Network {
            cladnet_id: "net-1".into(),
            ipv4_address_space: "10.77.0.0/24".into(),
            revision: 7,
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_str(&to_json(&n).unwrap()).unwrap();
        assert_eq!(v["cladnetId"], "net-1");
        assert_eq!(v["ipv4AddressSpace"], "10.77.0.0/24");
        assert_eq!(v["revision"], "7");
    }
}
