//! Plain-text tables: a header of upper-cased column names, then one line
//! per row, columns left-aligned and two spaces apart, trailing blanks cut.
//!
//! Columns are either JSON fields read from the daemon's answer by name
//! ([`table`]: rules, whose names come from `xdpath_api::rules`) or typed
//! accessors made by [`columns!`](crate::columns) from a field of an answer
//! type, so renaming a field there is a compile error here rather than a
//! column of dashes.

use serde_json::Value;

/// One column: its name and how to read it from a row of type `T`.
pub type Column<T> = (&'static str, fn(&T) -> Value);

/// Columns named after fields: `columns!(Guest: port, mac)` reads
/// `row.port` and `row.mac`; `columns!(QueueStats => counters: rx_frames)`
/// reads `row.counters.rx_frames`.
#[macro_export]
macro_rules! columns {
    ($ty:ty : $($field:ident),+ $(,)?) => {
        [$(
            (stringify!($field), (|r: &$ty| serde_json::to_value(&r.$field).unwrap_or(serde_json::Value::Null)) as fn(&$ty) -> serde_json::Value)
        ),+]
    };
    ($ty:ty => $inner:ident : $($field:ident),+ $(,)?) => {
        [$(
            (stringify!($field), (|r: &$ty| serde_json::to_value(&r.$inner.$field).unwrap_or(serde_json::Value::Null)) as fn(&$ty) -> serde_json::Value)
        ),+]
    };
}

/// A cell: strings as they are, `null` or absent as `-`, the rest as JSON.
pub fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Prints rows of typed values with the given columns.
pub fn typed<T>(rows: &[T], cols: &[Column<T>]) {
    let names: Vec<&str> = cols.iter().map(|c| c.0).collect();
    let cells = rows
        .iter()
        .map(|r| cols.iter().map(|(_, get)| cell(Some(&get(r)))).collect())
        .collect();
    print(&names, cells);
}

/// Prints an array of JSON objects with the given columns (fields).
pub fn table(rows: &Value, cols: &[&str]) {
    let cells = rows
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| cols.iter().map(|c| cell(r.get(*c))).collect())
                .collect()
        })
        .unwrap_or_default();
    print(cols, cells);
}

fn print(cols: &[&str], cells: Vec<Vec<String>>) {
    print!("{}", render(cols, &cells));
}

/// The text of a table.
pub fn render(cols: &[&str], cells: &[Vec<String>]) -> String {
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .filter_map(|r| r.get(i).map(String::len))
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |vals: &[String]| {
        let s: Vec<String> = vals
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        format!("{}\n", s.join("  ").trim_end())
    };
    let mut out = line(&cols.iter().map(|c| c.to_uppercase()).collect::<Vec<_>>());
    for r in cells {
        out.push_str(&line(r));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let text = render(
            &["id", "prefix", "guest"],
            &[
                vec!["8".into(), "10.88.0.0/16".into(), "-".into()],
                vec!["12".into(), "fd00::/8".into(), "1".into()],
            ],
        );
        assert_eq!(
            text,
            "ID  PREFIX        GUEST\n8   10.88.0.0/16  -\n12  fd00::/8      1\n"
        );
        assert_eq!(
            cell(Some(&serde_json::json!({"failed": "x"}))),
            r#"{"failed":"x"}"#
        );
        assert_eq!(cell(Some(&Value::Bool(true))), "true");
        assert_eq!(cell(None), "-");
    }
}
