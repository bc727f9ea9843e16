//! Plain-text tables and human-readable ages and sizes.

/// Left-aligned columns separated by two spaces, with a header row.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// `12s`, `5m`, `3h`, `2d` for a duration in milliseconds.
pub fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// `512M`, `1.5G`: binary multiples, one decimal above 10 units omitted.
pub fn bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size {
            let v = n as f64 / size as f64;
            return if v >= 10.0 || n.is_multiple_of(size) {
                format!("{:.0}{unit}", v)
            } else {
                format!("{v:.1}{unit}")
            };
        }
    }
    format!("{n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let t = render(&["ID", "NAME"], &[vec!["abc".into(), "x".into()], vec!["a".into(), "long".into()]]);
        assert_eq!(t, "ID   NAME\nabc  x\na    long");
    }

    #[test]
    fn ages_and_sizes() {
        assert_eq!(age(999), "0s");
        assert_eq!(age(61_000), "1m");
        assert_eq!(age(7_200_000), "2h");
        assert_eq!(age(200_000_000), "2d");
        assert_eq!(bytes(32 << 20), "32M");
        assert_eq!(bytes(3 << 29), "1.5G");
        assert_eq!(bytes(100), "100");
    }
}
