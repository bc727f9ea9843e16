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
    pub fn as_duration(self) -> Duration {
        Duration::from_millis(self.0)
    }

    /// Parses "250ms", "2s", "1.5s", "3m", "1h", or a bare number of ms.
    pub fn parse(text: &str) -> Result<Millis, String> {
        let text = text.trim();
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
        if !ms.is_finite() || !(0.0..=365.0 * 86_400_000.0).contains(&ms) {
            return Err(format!("duration {text:?} is out of range"));
        }
        Ok(Millis(ms.round() as u64))
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
        struct MillisVisitor;
        impl Visitor<'_> for MillisVisitor {
            type Value = Millis;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"500ms\", \"2s\" or a number of milliseconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Millis, E> {
                Ok(Millis(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Millis, E> {
                u64::try_from(v).map(Millis).map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Millis, E> {
                Millis::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Millis, E> {
                Millis::parse(v).map_err(E::custom)
            }
        }
        if deserializer.is_human_readable() {
            deserializer.deserialize_any(MillisVisitor)
        } else {
            deserializer.deserialize_u64(MillisVisitor)
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

    #[test]
    fn bincode_is_a_plain_number() {
        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(Millis(1234), cfg).unwrap();
        let (back, _): (Millis, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!(back, Millis(1234));
    }
}
