//! How figures read in the report.

use std::time::Duration;

/// 12345.6 -> "12,346".
pub(super) fn thousands(value: f64) -> String {
    let n = value.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

pub(super) fn pct(share: f64) -> String {
    format!("{:.0} %", share * 100.0)
}

pub(super) fn opt_pct(share: Option<f64>) -> String {
    share.map_or_else(|| "n/a".to_string(), pct)
}

pub(super) fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "n/a".to_string()
    }
}

pub(super) fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// (min, median, max) of per-second rates.
pub(super) fn spread(rates: &[f64]) -> Option<(f64, f64, f64)> {
    let mut sorted = rates.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some((*sorted.first()?, sorted[sorted.len() / 2], *sorted.last()?))
}
