//! The console log kept in memory, for the management API to serve.
//!
//! A byte ring of whole lines: when full, the oldest lines are dropped whole.

use alloc::collections::VecDeque;
use alloc::string::String;

pub struct LogRing {
    lines: VecDeque<String>,
    bytes: usize,
    capacity: usize,
    dropped: u64,
}

impl LogRing {
    pub const fn new(capacity: usize) -> Self {
        LogRing {
            lines: VecDeque::new(),
            bytes: 0,
            capacity,
            dropped: 0,
        }
    }

    /// Appends one line (without its newline). A line longer than the whole
    /// ring is cut to fit.
    pub fn push(&mut self, line: &str) {
        let mut line = line;
        if line.len() > self.capacity {
            let mut cut = self.capacity;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line = &line[..cut];
        }
        while self.bytes + line.len() > self.capacity {
            match self.lines.pop_front() {
                Some(old) => {
                    self.bytes -= old.len();
                    self.dropped += 1;
                }
                None => break,
            }
        }
        self.bytes += line.len();
        self.lines.push_back(String::from(line));
    }

    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(String::as_str)
    }

    /// Lines dropped to make room since boot.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_newest_lines_within_capacity() {
        let mut r = LogRing::new(20);
        for i in 0..10 {
            r.push(&alloc::format!("line {i}"));
        }
        let kept: Vec<_> = r.lines().collect();
        assert_eq!(kept, ["line 7", "line 8", "line 9"]);
        assert_eq!(r.dropped(), 7);
        assert!(r.lines().map(str::len).sum::<usize>() <= 20);
    }

    #[test]
    fn oversized_line_is_cut_on_a_char_boundary() {
        let mut r = LogRing::new(5);
        r.push("ééééé");
        assert_eq!(r.lines().next().unwrap(), "éé");
        assert_eq!(r.len(), 1);
    }
}
