//! Rendering results: bordered text tables, CSV, and a stdout writer that tolerates closed pipes.

use std::io::Write as _;
use std::process::ExitCode;

use serde_json::Value;

/// Rows of cells under a header; every row has as many cells as the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// openstackclient-style table: `+---+` borders and left-aligned, padded cells.
    pub fn render_text(&self) -> String {
        let single_line = |cell: &str| cell.replace(['\n', '\r'], " ");
        let headers: Vec<String> = self.headers.iter().map(|h| single_line(h)).collect();
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|row| row.iter().map(|c| single_line(c)).collect())
            .collect();
        let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let border: String = widths.iter().fold(String::from("+"), |mut line, width| {
            line.push_str(&"-".repeat(width + 2));
            line.push('+');
            line
        });
        let render_row = |cells: &[String]| -> String {
            let mut line = String::from("|");
            for (cell, width) in cells.iter().zip(&widths) {
                let padding = width - cell.chars().count();
                line.push(' ');
                line.push_str(cell);
                line.push_str(&" ".repeat(padding + 1));
                line.push('|');
            }
            line
        };
        let mut out = String::new();
        for line in [border.clone(), render_row(&headers), border.clone()] {
            out.push_str(&line);
            out.push('\n');
        }
        for row in &rows {
            out.push_str(&render_row(row));
            out.push('\n');
        }
        if !rows.is_empty() {
            out.push_str(&border);
            out.push('\n');
        }
        out
    }

    /// RFC 4180 quoting with a header row; lines end in `\n` so shell tools read them cleanly.
    pub fn render_csv(&self) -> String {
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let cells: Vec<String> = row.iter().map(|cell| csv_cell(cell)).collect();
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        out
    }
}

fn csv_cell(cell: &str) -> String {
    if cell.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell.to_owned()
    }
}

/// How one JSON value reads in a cell: strings bare, null empty, string lists comma-joined.
pub fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", "),
        Some(other) => other.to_string(),
    }
}

/// A `Field | Value` table of every attribute of an object, sorted by field name.
pub fn fields_table(object: &Value) -> Table {
    let mut table = Table::new(&["Field", "Value"]);
    if let Some(map) = object.as_object() {
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort();
        for key in keys {
            table.rows.push(vec![key.clone(), cell(map.get(key))]);
        }
    }
    table
}

/// `(header, attribute)` columns of `image list`, short and `--long`.
const LIST_COLUMNS: &[(&str, &str)] = &[("ID", "id"), ("Name", "name"), ("Status", "status")];
const LIST_LONG_COLUMNS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("Name", "name"),
    ("Disk Format", "disk_format"),
    ("Container Format", "container_format"),
    ("Size", "size"),
    ("Checksum", "checksum"),
    ("Status", "status"),
    ("Visibility", "visibility"),
    ("Protected", "protected"),
    ("Project", "owner"),
    ("Tags", "tags"),
];
/// The CSV columns: the console's image list export, as `GET /v2/cloudimages/export.csv`
/// writes it (ims-api `ims/images.rs`), so a file from either opens the same way.
pub const LIST_CSV_COLUMNS: &[&str] = &[
    "Name",
    "ID",
    "Status",
    "OS Type",
    "OS",
    "Image Type",
    "Disk Capacity (GB)",
    "Encrypted",
    "Created At",
];

fn columns_table(objects: &[Value], columns: &[(&str, &str)]) -> Table {
    let headers: Vec<&str> = columns.iter().map(|(header, _)| *header).collect();
    let mut table = Table::new(&headers);
    for object in objects {
        table.rows.push(
            columns
                .iter()
                .map(|(_, attribute)| cell(object.get(*attribute)))
                .collect(),
        );
    }
    table
}

pub fn image_list_table(images: &[Value], long: bool) -> Table {
    columns_table(
        images,
        if long {
            LIST_LONG_COLUMNS
        } else {
            LIST_COLUMNS
        },
    )
}

pub fn image_list_csv(images: &[Value]) -> Table {
    let mut table = Table::new(LIST_CSV_COLUMNS);
    table.rows = images.iter().map(console_row).collect();
    table
}

/// One image (Glance JSON, whose IMS `__*` properties are top-level attributes) as a row of
/// [`LIST_CSV_COLUMNS`], with the console's image-type names.
fn console_row(image: &Value) -> Vec<String> {
    let text = |key: &str| cell(image.get(key));
    let image_type = if image.get("__backup_id").is_some() {
        "Full-ECS image"
    } else {
        match image.get("virtual_env_type").and_then(Value::as_str) {
            Some("Ironic") => "BMS system disk image",
            Some("DataImage") => "ECS data disk image",
            Some("IsoImage") => "ISO image",
            _ => "ECS system disk image",
        }
    };
    let encrypted = if image.get("__system__cmkid").is_some() {
        "Yes"
    } else {
        "No"
    };
    let min_disk = match image.get("min_disk") {
        None | Some(Value::Null) => "0".to_owned(),
        value => cell(value),
    };
    vec![
        text("name"),
        text("id"),
        text("status"),
        text("__os_type"),
        text("__os_version"),
        image_type.to_owned(),
        min_disk,
        encrypted.to_owned(),
        text("created_at"),
    ]
}

pub fn members_table(members: &[Value]) -> Table {
    columns_table(
        members,
        &[
            ("Image ID", "image_id"),
            ("Member ID", "member_id"),
            ("Status", "status"),
        ],
    )
}

/// Writes `text` to stdout. A reader that went away (`ims image list | head`) is not an error.
pub fn emit(text: &str) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(err).context("writing to stdout"))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_table_aligns_columns_with_borders() {
        let table = Table {
            headers: vec!["ID".into(), "Name".into()],
            rows: vec![
                vec!["1".into(), "cirros".into()],
                vec!["22".into(), "é".into()],
            ],
        };
        let expected = "\
+----+--------+
| ID | Name   |
+----+--------+
| 1  | cirros |
| 22 | é      |
+----+--------+
";
        assert_eq!(table.render_text(), expected);
    }

    #[test]
    fn empty_text_table_is_just_the_header() {
        let table = image_list_table(&[], false);
        assert_eq!(
            table.render_text(),
            "+----+------+--------+\n| ID | Name | Status |\n+----+------+--------+\n"
        );
    }

    #[test]
    fn newlines_in_cells_do_not_break_rows() {
        let table = Table {
            headers: vec!["A".into()],
            rows: vec![vec!["x\ny".into()]],
        };
        assert!(table.render_text().contains("| x y |"));
    }

    #[test]
    fn csv_quotes_only_when_needed() {
        let table = Table {
            headers: vec!["a".into(), "b".into()],
            rows: vec![vec!["plain".into(), "with, comma \"q\"".into()]],
        };
        assert_eq!(table.render_csv(), "a,b\nplain,\"with, comma \"\"q\"\"\"\n");
    }

    #[test]
    fn cells_render_json_values_readably() {
        assert_eq!(cell(None), "");
        assert_eq!(cell(Some(&json!(null))), "");
        assert_eq!(cell(Some(&json!("x"))), "x");
        assert_eq!(cell(Some(&json!(12))), "12");
        assert_eq!(cell(Some(&json!(false))), "false");
        assert_eq!(cell(Some(&json!(["a", "b"]))), "a, b");
        assert_eq!(cell(Some(&json!({"k": 1}))), "{\"k\":1}");
    }

    #[test]
    fn fields_table_sorts_attributes() {
        let table = fields_table(&json!({"name": "n", "id": "i", "tags": []}));
        assert_eq!(
            table.rows,
            vec![
                vec!["id".to_owned(), "i".to_owned()],
                vec!["name".to_owned(), "n".to_owned()],
                vec!["tags".to_owned(), String::new()],
            ]
        );
    }

    #[test]
    fn csv_list_has_the_console_columns() {
        let image = json!({"id": "i", "name": "n, with comma", "status": "active",
            "visibility": "shared", "disk_format": "raw", "min_disk": 40,
            "__os_type": "Linux", "__os_version": "CentOS 7.9 64bit",
            "virtual_env_type": "DataImage", "__system__cmkid": "k",
            "created_at": "2026-01-01T00:00:00Z", "tags": []});
        let bare = json!({"id": "j", "name": "m", "status": "queued", "min_disk": 0,
            "created_at": "2026-01-02T00:00:00Z"});
        assert_eq!(
            image_list_csv(&[image, bare]).render_csv(),
            "Name,ID,Status,OS Type,OS,Image Type,Disk Capacity (GB),Encrypted,Created At\n\
             \"n, with comma\",i,active,Linux,CentOS 7.9 64bit,ECS data disk image,40,Yes,2026-01-01T00:00:00Z\n\
             m,j,queued,,,ECS system disk image,0,No,2026-01-02T00:00:00Z\n"
        );
    }

    #[test]
    fn long_list_adds_columns() {
        let table = image_list_table(&[json!({"id": "i", "tags": ["t"]})], true);
        assert_eq!(table.headers.len(), LIST_LONG_COLUMNS.len());
        assert_eq!(table.rows[0].last().map(String::as_str), Some("t"));
    }
}
