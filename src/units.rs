//! Value types of the jobs file: durations, sizes and shares as people write them.

use std::time::Duration;

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let accepted = "accepted: a whole number and a unit, s m h d w (e.g. 90s, 15m, 6h, 30d, 2w)";
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; {accepted}"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(format!("`{text}` is not a duration; {accepted}")),
    };
    Ok(Duration::from_secs(n * secs))
}

pub fn parse_size(text: &str) -> Result<u64, String> {
    let accepted = "accepted: a number of bytes with an optional unit B KB MB GB TB (powers of 1000) or KiB MiB GiB TiB (powers of 1024), e.g. 512MB, 5GiB";
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size; {accepted}"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return Err(format!("`{text}` is not a size; {accepted}")),
    };
    Ok((n * mult as f64).round() as u64)
}

pub fn parse_share(text: &str) -> Result<f64, String> {
    let accepted = "accepted: a percentage from 0% to 100%, e.g. 75%";
    let t = text.trim();
    let Some(num) = t.strip_suffix('%') else {
        return Err(format!("`{text}` is not a share; {accepted}"));
    };
    match num.trim().parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p / 100.0),
        _ => Err(format!("`{text}` is not a share; {accepted}")),
    }
}
