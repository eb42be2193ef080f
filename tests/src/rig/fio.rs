//! fio's terse (v3) output: one line per job, fields separated by ';'.

/// Read bandwidth (KiB/s) and IOPS of one job.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Result {
    pub read_kib_s: f64,
    pub read_iops: f64,
    pub write_kib_s: f64,
    pub write_iops: f64,
    pub errors: u64,
}

/// Parses the first terse line in `text`.
pub fn parse_terse(text: &str) -> Option<Result> {
    let line = text.lines().find(|l| l.starts_with("3;"))?;
    let f: Vec<&str> = line.split(';').collect();
    // v3: 1 version, 2 fio version, 3 job, 4 group, 5 error, 6.. read, 47.. write.
    let num = |i: usize| f.get(i)?.trim().parse::<f64>().ok();
    Some(Result {
        read_kib_s: num(6)?,
        read_iops: num(7)?,
        write_kib_s: num(47)?,
        write_iops: num(48)?,
        errors: num(4)? as u64,
    })
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terse_fields() {
        let mut fields = vec!["0"; 130];
        fields[0] = "3";
        fields[2] = "job";
        fields[4] = "0";
        fields[6] = "123456";
        fields[7] = "30864";
        fields[47] = "5";
        fields[48] = "1";
        let line = fields.join(";");
        let r = parse_terse(&format!("noise\n{line}\n")).unwrap();
        assert_eq!(
            (r.read_kib_s, r.read_iops, r.write_iops, r.errors),
            (123456.0, 30864.0, 1.0, 0)
        );
        assert!(parse_terse("nothing").is_none());
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
    }
}
