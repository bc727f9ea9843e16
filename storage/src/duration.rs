//! `Millis`: a duration in whole milliseconds that reads and writes as a
//! friendly string on the JSON API ("500ms", "2s", "1m", "1h") and accepts a
//! bare number of milliseconds too. In bincode (not human-readable) it is a
//! plain `u64`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Millis {
    /// The longest duration the API accepts, in every form (string, integer,
    /// float): 365 days. Longer ones are refused rather than wrapped when a
    /// worker adds them to a clock.
    pub const MAX: Millis = Millis(365 * 86_400_000);

    pub fn as_duration(self) -> Duration {
        Duration::from_millis(self.0)
    }

    /// Parses "250ms", "2s", "1.5s", "3m", "1h", or a bare number of ms:
    /// a decimal number (at most 9 decimal places) and a unit, with ASCII
    /// blanks around. Exact: the value in milliseconds is computed in
    /// integers and rounded half up, so [`duration_pattern`] can say
    /// precisely which strings give at least a given duration.
    pub fn parse(text: &str) -> Result<Millis, String> {
        // ASCII blanks only, as the pattern says.
        let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
        let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let scale: u128 = match unit {
            "" | "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(format!("invalid duration unit {unit:?} in {text:?}: use ms, s, m or h")),
        };
        let invalid = || format!("invalid duration {text:?}: expected e.g. \"500ms\", \"2s\", \"1m\"");
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(invalid());
        }
        if fraction.len() > FRACTION_DIGITS {
            return Err(format!("duration {text:?} has more than {FRACTION_DIGITS} decimal places"));
        }
        let out_of_range = || format!("duration {text:?} is out of range (at most 365 days)");
        let whole = whole.trim_start_matches('0');
        if whole.len() > 20 {
            return Err(out_of_range());
        }
        let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| invalid())? };
        let fraction: u128 = format!("{fraction:0<width$}", width = FRACTION_DIGITS).parse().map_err(|_| invalid())?;
        // The duration in billionths of a millisecond: exact.
        let nano_ms = (whole * NANO + fraction) * scale;
        if nano_ms > Millis::MAX.0 as u128 * NANO {
            return Err(out_of_range());
        }
        Ok(Millis(((nano_ms + NANO / 2) / NANO) as u64))
    }
}

/// The most decimal places a duration string may have.
const FRACTION_DIGITS: usize = 9;
const NANO: u128 = 1_000_000_000;

/// The units of a duration string, with their scale in ms and their regex
/// (`ms` may be left out).
const UNITS: [(u64, &str); 4] = [(3_600_000, "h"), (60_000, "m"), (1_000, "s"), (1, "(?:ms)?")];

/// The pattern of the duration strings that [`Millis::parse`] reads as at
/// least `min` (and at most [`Millis::MAX`]): one branch per unit, each
/// the numbers of that unit in range, built from their digits. With `min`
/// 0 it is the pattern of every duration. Tests check it against the
/// parser on many strings.
pub fn duration_pattern(min: Millis) -> String {
    assert!(min <= Millis::MAX, "a minimum above the maximum");
    let branches: Vec<String> = UNITS
        .iter()
        .filter_map(|&(scale, unit)| {
            let numbers = numbers_at_least(min.0, scale);
            (!numbers.is_empty()).then(|| format!("(?:{}){unit}", numbers.join("|")))
        })
        .collect();
    format!(r"^[ \t\n\f\r]*(?:{})[ \t\n\f\r]*$", branches.join("|"))
}

/// The decimal numbers `n` (as written: `0*` and digits with an optional
/// fraction of up to 9 digits, or a fraction alone) for which `n × scale`
/// ms rounds to at least `min` ms and is at most [`Millis::MAX`]: regex
/// alternatives, none if there is no such number.
fn numbers_at_least(min: u64, scale: u64) -> Vec<String> {
    let top = Millis::MAX.0 / scale; // exact for every unit (365 days)
    let any_fraction = format!(r"(?:\.[0-9]{{0,{FRACTION_DIGITS}}})?");
    let zero_fraction = format!(r"(?:\.0{{0,{FRACTION_DIGITS}}})?");
    let mut numbers = Vec::new();
    // `first`: the least integer part that is in range with any fraction.
    let first = if min == 0 {
        numbers.push(format!(r"\.[0-9]{{1,{FRACTION_DIGITS}}}"));
        0
    } else {
        // n × scale ≥ min − ½ ⇔ n ≥ (2 min − 1) / (2 scale) = whole + rest / den.
        let (num, den) = (2 * min as u128 - 1, 2 * scale as u128);
        let (mut whole, rest) = ((num / den) as u64, num % den);
        // The least 9-digit fraction, as an integer, not below rest / den.
        let mut least = (rest * NANO).div_ceil(den) as u64;
        if least == NANO as u64 {
            (whole, least) = (whole + 1, 0);
        }
        if least == 0 {
            whole
        } else {
            if whole < top {
                let digits = if whole == 0 { String::new() } else { whole.to_string() };
                numbers.push(format!(r"0*{digits}\.{}", fraction_at_least(least)));
            }
            whole + 1
        }
    };
    if first < top {
        numbers.push(format!("0*(?:{}){any_fraction}", integers(first, top - 1)));
    }
    if first <= top {
        numbers.push(format!("0*{top}{zero_fraction}"));
    }
    numbers
}

/// The fractions (the digits after the point, up to 9) that are at least
/// `least` / 10⁹, `least` in 1..10⁹: for each digit of `least` up to its
/// last non-zero one, the digits before it and a greater one there; or
/// all of them up to its last non-zero one, and any after.
fn fraction_at_least(least: u64) -> String {
    let digits: Vec<u8> = format!("{least:0width$}", width = FRACTION_DIGITS).bytes().map(|b| b - b'0').collect();
    let last = digits.iter().rposition(|&d| d != 0).expect("least is not 0");
    let prefix = |i: usize| digits[..i].iter().map(|d| d.to_string()).collect::<String>();
    let mut alternatives = Vec::new();
    for (i, &d) in digits.iter().enumerate().take(last + 1) {
        if d < 9 {
            let rest = FRACTION_DIGITS - i - 1;
            alternatives.push(format!("{}{}[0-9]{{0,{rest}}}", prefix(i), digit_class(d + 1, 9)));
        }
    }
    alternatives.push(format!("{}[0-9]{{0,{}}}", prefix(last + 1), FRACTION_DIGITS - last - 1));
    format!("(?:{})", alternatives.join("|"))
}

/// `[a-b]`, or the digit alone.
fn digit_class(a: u8, b: u8) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("[{a}-{b}]")
    }
}

/// The integers `a..=b` written without leading zeros: regex alternatives.
fn integers(a: u64, b: u64) -> String {
    let mut alternatives = Vec::new();
    let (mut lo, digits_b) = (a, b.to_string().len());
    for len in lo.to_string().len()..=digits_b {
        let hi = if len == digits_b { b } else { 10u64.pow(len as u32) - 1 };
        same_length(lo.to_string().as_bytes(), hi.to_string().as_bytes(), "", &mut alternatives);
        lo = hi + 1;
    }
    alternatives.join("|")
}

/// The numbers from `lo` to `hi` (the same number of digits) after `prefix`.
fn same_length(lo: &[u8], hi: &[u8], prefix: &str, out: &mut Vec<String>) {
    let Some((&l, lo_rest)) = lo.split_first() else {
        out.push(prefix.to_string());
        return;
    };
    let (&h, hi_rest) = hi.split_first().expect("the same length");
    let (l, h) = (l - b'0', h - b'0');
    if l == h {
        return same_length(lo_rest, hi_rest, &format!("{prefix}{l}"), out);
    }
    let from_zero = lo_rest.iter().all(|&d| d == b'0');
    let to_nine = hi_rest.iter().all(|&d| d == b'9');
    if !from_zero {
        same_length(lo_rest, &vec![b'9'; lo_rest.len()], &format!("{prefix}{l}"), out);
    }
    let (first, last) = (if from_zero { l } else { l + 1 }, if to_nine { h } else { h - 1 });
    if first <= last {
        let any = if lo_rest.is_empty() { String::new() } else { format!("[0-9]{{{}}}", lo_rest.len()) };
        out.push(format!("{prefix}{}{any}", digit_class(first, last)));
    }
    if !to_nine {
        same_length(&vec![b'0'; hi_rest.len()], hi_rest, &format!("{prefix}{h}"), out);
    }
}

/// In the OpenAPI document: a duration string, or a whole number of
/// milliseconds, at most [`Millis::MAX`].
impl utoipa::PartialSchema for Millis {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::OneOf(Millis::schema_at_least(Millis(0))))
    }
}

impl utoipa::ToSchema for Millis {}

impl Millis {
    /// The schema of a duration that must be at least `min`: the same two
    /// forms, their ranges starting at `min`.
    pub fn schema_at_least(min: Millis) -> utoipa::openapi::schema::OneOf {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(Millis::text(min))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(min.0 as f64))
                    .maximum(Some(Millis::MAX.0 as f64))
                    .description(Some("milliseconds")),
            )
            .build()
    }

    fn text(min: Millis) -> utoipa::openapi::schema::ObjectBuilder {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let at_least = if min.0 == 0 { String::new() } else { format!(", at least {min}") };
        ObjectBuilder::new().schema_type(Type::String).pattern(Some(duration_pattern(min))).description(Some(format!(
            "a duration: \"500ms\", \"2s\", \"1.5s\", \"3m\", \"1h\" (at most {FRACTION_DIGITS} decimal places; \
             at most 365 days{at_least})"
        )))
    }

    /// The schema of a duration in a query string (`?wait=2s`): text only,
    /// as [`Millis::parse`] reads it. A bare number there is text too
    /// (`?wait=250`, milliseconds), and the pattern already takes it; the
    /// JSON number branch of [`Millis`]'s schema would let a client send
    /// `?wait=1e-9`, which is no duration.
    pub fn query_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        Millis::text(Millis(0)).into()
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        if ms != 0 && ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms != 0 && ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms != 0 && ms.is_multiple_of(1_000) {
            write!(f, "{}s", ms / 1_000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// `.0`: whether the cap applies. It does on every human-readable
        /// (API) input; bincode carries values already accepted, and a Raft
        /// entry written before the cap must still decode.
        struct MillisVisitor(bool);
        impl Visitor<'_> for MillisVisitor {
            type Value = Millis;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"500ms\", \"2s\" or a number of milliseconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Millis, E> {
                if self.0 && v > Millis::MAX.0 {
                    return Err(E::custom(format!("duration {v} ms is out of range (at most 365 days)")));
                }
                Ok(Millis(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Millis, E> {
                let v = u64::try_from(v).map_err(|_| E::custom("a duration cannot be negative"))?;
                self.visit_u64(v)
            }
            /// A JSON number with a fraction or an exponent (`2000.0`,
            /// `2e3`): whole milliseconds only, as the schema's `integer`
            /// says (a fraction is written as a string, `"1.5ms"`).
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Millis, E> {
                if v < 0.0 {
                    return Err(E::custom("a duration cannot be negative"));
                }
                if v > Millis::MAX.0 as f64 {
                    return Err(E::custom(format!("duration {v} ms is out of range (at most 365 days)")));
                }
                if v.fract() != 0.0 {
                    return Err(E::custom(format!(
                        "a number of milliseconds is whole: {v} is not (write a fraction as a string, \"1.5ms\")"
                    )));
                }
                Ok(Millis(v as u64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Millis, E> {
                Millis::parse(v).map_err(E::custom)
            }
        }
        if deserializer.is_human_readable() {
            deserializer.deserialize_any(MillisVisitor(true))
        } else {
            deserializer.deserialize_u64(MillisVisitor(false))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_units() {
        assert_eq!(Millis::parse("500ms").unwrap(), Millis(500));
        assert_eq!(Millis::parse("2s").unwrap(), Millis(2_000));
        assert_eq!(Millis::parse("1.5s").unwrap(), Millis(1_500));
        assert_eq!(Millis::parse("3m").unwrap(), Millis(180_000));
        assert_eq!(Millis::parse("250").unwrap(), Millis(250));
        assert!(Millis::parse("2 weeks").is_err());
        assert!(Millis::parse("").is_err());
        assert!(Millis::parse("-1s").is_err());
        assert_eq!(Millis(2_000).to_string(), "2s");
        assert_eq!(Millis(1_500).to_string(), "1500ms");
        assert_eq!(Millis(0).to_string(), "0ms");
    }

    #[test]
    fn parsing_is_exact() {
        assert_eq!(Millis::parse("0.0995s"), Ok(Millis(100)), "99.5 ms rounds half up");
        assert_eq!(Millis::parse("0.0994999s"), Ok(Millis(99)));
        assert_eq!(Millis::parse(".5"), Ok(Millis(1)));
        assert_eq!(Millis::parse("0.4ms"), Ok(Millis(0)));
        assert_eq!(Millis::parse("5."), Ok(Millis(5)));
        assert_eq!(Millis::parse("0.000000001h"), Ok(Millis(0)));
        assert_eq!(Millis::parse("8760h"), Ok(Millis::MAX));
        assert_eq!(Millis::parse("0008760.000000000h"), Ok(Millis::MAX));
        assert!(Millis::parse("8760.000000001h").is_err());
        assert!(Millis::parse("31536000000.4ms").is_err(), "the range is checked before rounding");
        assert!(Millis::parse("1.0000000001s").unwrap_err().contains("decimal places"));
        for bad in [".", "1.2.3", "s", " ms", "1e3", "+1s", "1 s", "1S", "１s"] {
            assert!(Millis::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// A tiny deterministic generator, for the pattern test.
    struct Lcg(u64);
    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    fn random_duration(rng: &mut Lcg) -> String {
        let digits = |rng: &mut Lcg, n: u64| (0..n).map(|_| char::from(b'0' + rng.below(10) as u8)).collect::<String>();
        let mut text = String::new();
        if rng.below(10) == 0 {
            text.push_str([" ", "\t", "\n"][rng.below(3) as usize]);
        }
        if rng.below(4) == 0 {
            text.push_str(&"0".repeat(rng.below(3) as usize + 1));
        }
        let whole = rng.below(13);
        text.push_str(&digits(rng, whole));
        if rng.below(2) == 0 {
            text.push('.');
            let fraction = rng.below(12);
            text.push_str(&digits(rng, fraction));
        }
        text.push_str(["", "ms", "s", "m", "h", "x", "ms "][rng.below(7) as usize]);
        if rng.below(20) == 0 {
            text.insert(rng.below(text.len() as u64 + 1) as usize, ['.', ' ', '-', 'e'][rng.below(4) as usize]);
        }
        text
    }

    /// The strings near `min` in each unit: `min` − ½ ms written with 9
    /// decimals, a few billionths of the unit either way, and shorter.
    fn near(min: u64) -> Vec<String> {
        let mut out = Vec::new();
        for (scale, unit) in [(1u128, "ms"), (1_000, "s"), (60_000, "m"), (3_600_000, "h")] {
            for target in [(2 * min as u128).saturating_sub(1), 2 * Millis::MAX.0 as u128] {
                let center = (target * NANO).div_ceil(2 * scale);
                for delta in -3i128..=3 {
                    let n = (center as i128 + delta).max(0) as u128;
                    let text = format!("{}.{:09}", n / NANO, n % NANO);
                    out.push(format!("{text}{unit}"));
                    out.push(format!("{}{unit}", text.trim_end_matches('0')));
                }
            }
        }
        out
    }

    /// The pattern of "at least `min`" takes exactly the strings that parse
    /// to a duration of at least `min`: random strings, and the strings
    /// around each bound.
    #[test]
    fn the_pattern_is_the_parser() {
        let mut rng = Lcg(7);
        for min in
            [0, 1, 99, 100, 1_000, 1_001, 59_999, 60_000, 3_600_000, 12_345_678, Millis::MAX.0 - 1, Millis::MAX.0]
        {
            let pattern = duration_pattern(Millis(min));
            let regex = regex_automata::meta::Regex::new(&pattern).expect("a valid pattern");
            let mut texts: Vec<String> = (0..20_000).map(|_| random_duration(&mut rng)).collect();
            texts.extend(near(min));
            texts.extend(near(1));
            texts.extend(near(100));
            let mut accepted = 0;
            for text in &texts {
                let parsed = Millis::parse(text);
                let by_parser = parsed.as_ref().is_ok_and(|m| m.0 >= min);
                assert_eq!(regex.is_match(text), by_parser, "min {min}: {text:?} parses as {parsed:?}");
                accepted += usize::from(by_parser);
            }
            assert!(accepted > 100, "min {min}: only {accepted} accepted");
        }
    }

    #[test]
    fn integers_match_exactly_their_range() {
        for (a, b) in [(0, 0), (0, 9), (0, 10), (1, 99), (7, 1234), (99, 100), (100, 31_535), (250, 250), (19, 91)] {
            let regex = regex_automata::meta::Regex::new(&format!("^(?:{})$", integers(a, b))).expect("a pattern");
            for n in 0..=40_000u64 {
                assert_eq!(regex.is_match(&n.to_string()), (a..=b).contains(&n), "{a}..={b}: {n}");
            }
            assert!(!regex.is_match(&format!("0{a}")), "no leading zero");
        }
    }

    #[test]
    fn json_accepts_strings_and_numbers() {
        let a: Millis = serde_json::from_str("\"2s\"").unwrap();
        let b: Millis = serde_json::from_str("2000").unwrap();
        assert_eq!(a, b);
        assert_eq!(serde_json::from_str::<Millis>("2000.0").unwrap(), b, "a whole number, written as a float");
        assert_eq!(serde_json::from_str::<Millis>("2e3").unwrap(), b);
        assert!(serde_json::from_str::<Millis>("1.5").unwrap_err().to_string().contains("whole"));
        assert!(serde_json::from_str::<Millis>("-5").is_err());
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"2s\"");
    }

    /// Point 4(c): the 365-day cap holds for bare numbers as for strings.
    #[test]
    fn the_cap_applies_to_every_json_form() {
        let max = Millis::MAX.0;
        assert_eq!(serde_json::from_str::<Millis>(&max.to_string()).unwrap(), Millis::MAX);
        for too_long in [
            u64::MAX.to_string(),
            (max + 1).to_string(),
            format!("{}.0", max + 1),
            "1e30".to_string(),
            "\"9000h\"".to_string(),
            format!("\"{}\"", u64::MAX),
        ] {
            let err = serde_json::from_str::<Millis>(&too_long).unwrap_err().to_string();
            assert!(err.contains("out of range"), "{too_long}: {err}");
        }
        // Internal bincode still carries any value already in a log.
        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(Millis(u64::MAX), cfg).unwrap();
        let (back, _): (Millis, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!(back, Millis(u64::MAX));
    }

    #[test]
    fn bincode_is_a_plain_number() {
        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(Millis(1234), cfg).unwrap();
        let (back, _): (Millis, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!(back, Millis(1234));
    }
}

/// Parses an RFC 3339 time ("2026-11-25T13:42:18.534123456Z", any offset)
/// — the Docker engine's stamps — with `chrono`. Times before the epoch
/// (the engine's "never", year 1) and anything unreadable give `None`.
pub fn parse_rfc3339(text: &str) -> Option<std::time::SystemTime> {
    let at = chrono::DateTime::parse_from_rfc3339(text.trim()).ok()?;
    let since = std::time::Duration::new(u64::try_from(at.timestamp()).ok()?, at.timestamp_subsec_nanos());
    Some(std::time::UNIX_EPOCH + since)
}

/// [`parse_rfc3339`] in Unix milliseconds.
pub fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    let since = parse_rfc3339(text)?.duration_since(std::time::UNIX_EPOCH).ok()?;
    u64::try_from(since.as_millis()).ok()
}

#[cfg(test)]
mod rfc3339_tests {
    use super::*;

    #[test]
    fn engine_stamps_parse() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("1970-01-02T00:00:01.5Z"), Some(86_401_500));
        assert_eq!(parse_rfc3339_ms("2024-05-01T12:34:56.123456789Z"), Some(1_714_566_896_123));
        assert_eq!(parse_rfc3339_ms("2024-05-01T14:34:56.123+02:00"), Some(1_714_566_896_123));
        let t = parse_rfc3339("2026-11-25T13:42:18.534123456Z").unwrap();
        assert_eq!(t.duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos(), 534_123_456);
        assert_eq!(parse_rfc3339("0001-01-01T00:00:00Z"), None, "a container that never ran");
        assert_eq!(parse_rfc3339(""), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
