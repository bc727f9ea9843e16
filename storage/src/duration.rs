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

    /// Parses "250ms", "2s", "1.5s", "3m", "1h", or a bare number of ms.
    pub fn parse(text: &str) -> Result<Millis, String> {
        // ASCII blanks only, as the pattern says.
        let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
        let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: expected e.g. \"500ms\", \"2s\", \"1m\""))?;
        let scale = match unit {
            "" | "ms" => 1.0,
            "s" => 1_000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            _ => return Err(format!("invalid duration unit {unit:?} in {text:?}: use ms, s, m or h")),
        };
        let ms = value * scale;
        if !ms.is_finite() || !(0.0..=Millis::MAX.0 as f64).contains(&ms) {
            return Err(format!("duration {text:?} is out of range (at most 365 days)"));
        }
        Ok(Millis(ms.round() as u64))
    }
}

/// The pattern of a duration string, as [`Millis::parse`] reads it: a
/// number and an optional unit (`ms`, `s`, `m`, `h`; none = ms), at most
/// [`Millis::MAX`] (8760 h = 525600 m = 31536000 s = 31536000000 ms), with
/// ASCII blanks around. One branch per unit, each a number below the
/// unit's limit (by its digits), the limit itself, or a fraction below 1.
pub const DURATION_PATTERN: &str = concat!(
    r"^[ \t\n\f\r]*(?:",
    r"(?:0*(?:[0-9]{1,3}|[0-7][0-9]{3}|8[0-6][0-9]{2}|87[0-5][0-9])(?:\.[0-9]*)?|0*8760(?:\.0*)?|\.[0-9]+)h",
    r"|(?:0*(?:[0-9]{1,5}|[0-4][0-9]{5}|5[01][0-9]{4}|52[0-4][0-9]{3}|525[0-5][0-9]{2})(?:\.[0-9]*)?",
    r"|0*525600(?:\.0*)?|\.[0-9]+)m",
    r"|(?:0*(?:[0-9]{1,7}|[0-2][0-9]{7}|30[0-9]{6}|31[0-4][0-9]{5}|315[0-2][0-9]{4}|3153[0-5][0-9]{3})",
    r"(?:\.[0-9]*)?|0*31536000(?:\.0*)?|\.[0-9]+)s",
    r"|(?:0*(?:[0-9]{1,10}|[0-2][0-9]{10}|30[0-9]{9}|31[0-4][0-9]{8}|315[0-2][0-9]{7}|3153[0-5][0-9]{6})",
    r"(?:\.[0-9]*)?|0*31536000000(?:\.0*)?|\.[0-9]+)(?:ms)?",
    r")[ \t\n\f\r]*$",
);

/// In the OpenAPI document: a duration string, or a number of
/// milliseconds, at most [`Millis::MAX`].
impl utoipa::PartialSchema for Millis {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(Millis::text())
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Number)
                    .minimum(Some(0))
                    .maximum(Some(Millis::MAX.0 as f64))
                    .description(Some("milliseconds")),
            )
            .into()
    }
}

impl utoipa::ToSchema for Millis {}

impl Millis {
    fn text() -> utoipa::openapi::schema::ObjectBuilder {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(DURATION_PATTERN))
            .description(Some("a duration: \"500ms\", \"2s\", \"1.5s\", \"3m\", \"1h\" (at most 365 days)"))
    }

    /// The schema of a duration in a query string (`?wait=2s`): text only,
    /// as [`Millis::parse`] reads it. A bare number there is text too
    /// (`?wait=250`, milliseconds), and the pattern already takes it; the
    /// JSON number branch of [`Millis`]'s schema would let a client send
    /// `?wait=1e-9`, which is no duration.
    pub fn query_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        Millis::text().into()
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
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Millis, E> {
                Millis::parse(&v.to_string()).map_err(E::custom)
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
    fn json_accepts_strings_and_numbers() {
        let a: Millis = serde_json::from_str("\"2s\"").unwrap();
        let b: Millis = serde_json::from_str("2000").unwrap();
        assert_eq!(a, b);
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
