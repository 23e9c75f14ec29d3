//! Numbers and sizes as labels, log lines and the report print them.

/// "1 GiB", "256 MiB".
pub fn fmt_size(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes % (1 << 30) == 0 {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// 20000 -> "20,000"; fractions are rounded.
pub fn group_thousands(v: f64) -> String {
    let neg = v < 0.0;
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if neg {
        format!("-{out}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands() {
        assert_eq!(group_thousands(0.0), "0");
        assert_eq!(group_thousands(999.4), "999");
        assert_eq!(group_thousands(1000.0), "1,000");
        assert_eq!(group_thousands(58900.0), "58,900");
        assert_eq!(group_thousands(1234567.0), "1,234,567");
    }

    #[test]
    fn sizes() {
        assert_eq!(fmt_size(1 << 30), "1 GiB");
        assert_eq!(fmt_size(256 << 20), "256 MiB");
        assert_eq!(fmt_size(3 << 29), "1536 MiB");
    }
}
