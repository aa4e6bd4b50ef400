//! Printing results: aligned tables for people, JSON or YAML for scripts.

use serde::Serialize;

use crate::cli::Output;

/// A table: a header row and rows of cells.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders the table with columns padded to their widest cell.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(width) = widths.get_mut(i) {
                    *width = (*width).max(cell.chars().count());
                }
            }
        }
        let line = |cells: &[String]| {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let width = widths.get(i).copied().unwrap_or(0);
                    if i + 1 == cells.len() {
                        c.clone()
                    } else {
                        format!("{c:<width$}")
                    }
                })
                .collect::<Vec<_>>()
                .join("   ")
        };
        let mut out = line(&self.header);
        for row in &self.rows {
            out.push('\n');
            out.push_str(&line(row));
        }
        out
    }
}

/// Prints `value` as JSON or YAML, or calls `table` for the human form.
pub fn print<T: Serialize>(
    format: Output,
    value: &T,
    table: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    match format {
        Output::Table => {
            let text = table();
            // A table with only its header says nothing (every node failed).
            if text.contains('\n') {
                println!("{text}");
            }
        }
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => print!(
            "{}",
            serde_saphyr::to_string(value).map_err(|e| anyhow::anyhow!(e.to_string()))?
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let mut table = Table::new(&["NODE", "STATE"]);
        table.row(vec!["10.5.0.2".into(), "ready".into()]);
        table.row(vec!["n".into(), "booting".into()]);
        assert_eq!(
            table.render(),
            "NODE       STATE\n10.5.0.2   ready\nn          booting"
        );
    }
}
