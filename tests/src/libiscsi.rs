//! libiscsi's iscsi-test-cu, run and summarised.

use std::process::Command;

/// CUnit's test counts for one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub total: u32,
    pub ran: u32,
    pub passed: u32,
    pub failed: u32,
    /// Tests that printed `[SKIPPED]` (CUnit counts them as passed).
    pub skipped: u32,
}

/// Reads CUnit's run summary (`tests TOTAL RAN PASSED FAILED ...`).
pub fn summary(out: &str) -> Option<Summary> {
    let line = out.lines().find(|l| l.trim_start().starts_with("tests"))?;
    let n: Vec<u32> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    // A test's own skip line follows its name ("Test: X ...    [SKIPPED]");
    // a skip printed after "passed" comes from the next test's setup.
    let skipped = out
        .lines()
        .filter(|l| l.contains("Test: ") && l.contains("[SKIPPED]") && !l.contains("...passed"))
        .count() as u32;
    (n.len() >= 4).then(|| Summary {
        total: n[0],
        ran: n[1],
        passed: n[2],
        failed: n[3],
        skipped,
    })
}

/// Runs `iscsi-test-cu --dataloss -t FAMILY URL [URL2]` (write tests
/// included; a second path to the same LU enables the multipath tests).
pub fn test_cu(urls: &[&str], family: &str) -> (String, Option<Summary>) {
    let out = Command::new("iscsi-test-cu")
        .args(["--dataloss", "-t", family])
        .args(urls)
        .output()
        .expect("iscsi-test-cu (apt-get install libiscsi-bin)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let s = summary(&text);
    (text, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_counts_and_skips() {
        let out = "  Test: Simple ...    [SKIPPED] RESERVE6 is not implemented\n\
                   passed\n  Test: Other ...passed    [SKIPPED] PERSISTENT RESERVE IN is not implemented.\n\
                   Run Summary:    Type  Total    Ran Passed Failed Inactive\n\
                   suites      2      2    n/a      0        0\n\
                   tests      2      2      2      0        0\n";
        assert_eq!(
            summary(out),
            Some(Summary {
                total: 2,
                ran: 2,
                passed: 2,
                failed: 0,
                skipped: 1
            })
        );
    }
}
