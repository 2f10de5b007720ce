//! Fixed-width tables with word-wrapped cells.

pub(crate) struct Table {
    cols: Vec<(String, usize)>,
}

impl Table {
    pub(crate) fn new(cols: &[(&str, usize)]) -> Table {
        Table {
            cols: cols.iter().map(|(n, w)| (n.to_string(), *w)).collect(),
        }
    }

    pub(crate) fn header(&self) {
        let names: Vec<&str> = self.cols.iter().map(|(n, _)| n.as_str()).collect();
        self.row(&names);
        let rule: Vec<String> = self.cols.iter().map(|(_, w)| "─".repeat(*w)).collect();
        println!("{}", rule.join(" "));
    }

    /// One row; cells longer than their column wrap onto continuation lines.
    pub(crate) fn row(&self, cells: &[&str]) {
        let mut wrapped: Vec<Vec<String>> = cells
            .iter()
            .zip(&self.cols)
            .map(|(c, (_, w))| wrap(c, *w))
            .collect();
        let height = wrapped.iter().map(Vec::len).max().unwrap_or(1).max(1);
        // A rule column ("│") runs down every line of the row.
        for (cell, text) in wrapped.iter_mut().zip(cells) {
            if *text == "│" {
                *cell = vec![text.to_string(); height];
            }
        }
        for line in 0..height {
            let parts: Vec<String> = wrapped
                .iter()
                .zip(&self.cols)
                .map(|(cell, (_, w))| pad(cell.get(line).map_or("", String::as_str), *w))
                .collect();
            println!("{}", parts.join(" ").trim_end());
        }
    }
}

pub(crate) fn pad(s: &str, w: usize) -> String {
    let n = s.chars().count();
    if n >= w {
        s.chars().take(w).collect()
    } else {
        format!("{s}{}", " ".repeat(w - n))
    }
}

/// Greedy word wrap to `w` columns; words longer than `w` are cut.
pub(crate) fn wrap(s: &str, w: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in s.split_whitespace() {
        let mut word: String = word.to_string();
        while word.chars().count() > w {
            if !cur.is_empty() {
                lines.push(std::mem::take(&mut cur));
            }
            let head: String = word.chars().take(w).collect();
            word = word.chars().skip(w).collect();
            lines.push(head);
        }
        let need = cur.chars().count() + usize::from(!cur.is_empty()) + word.chars().count();
        if need > w && !cur.is_empty() {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(&word);
    }
    if !cur.is_empty() || lines.is_empty() {
        lines.push(cur);
    }
    lines
}
