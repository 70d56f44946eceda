//! Instants on the backend's clock.
//!
//! A [`Timestamp`] is microseconds since the Unix epoch: Redis's `TIME` gives
//! microseconds, so both backends decide expiry at the same resolution, and FIFO order
//! between two calls in the same millisecond is still kept. On the wire it is RFC 3339
//! UTC.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Microseconds since the Unix epoch, on the backend's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The epoch itself; used as "no time" in places where a value is required.
    pub const ZERO: Timestamp = Timestamp(0);

    pub fn from_micros(us: u64) -> Self {
        Timestamp(us)
    }

    pub fn as_micros(self) -> u64 {
        self.0
    }

    /// The instant `d` later, saturating instead of overflowing. A named method rather
    /// than `ops::Add` so that saturation is visible at the call site.
    #[allow(clippy::should_implement_trait)]
    pub fn add(self, d: Duration) -> Self {
        Timestamp(
            self.0
                .saturating_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        )
    }

    /// How long after `earlier` this is (zero when it is not after).
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }

    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.0)
    }

    pub fn from_system_time(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        Timestamp(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }

    /// RFC 3339 UTC with microseconds, e.g. `2026-11-26T12:00:00.000000Z`.
    pub fn to_rfc3339(self) -> String {
        humantime::format_rfc3339_micros(self.to_system_time()).to_string()
    }

    pub fn parse_rfc3339(s: &str) -> Result<Self, humantime::TimestampError> {
        humantime::parse_rfc3339_weak(s).map(Self::from_system_time)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

/// On the wire a timestamp is an RFC 3339 string (`date-time`), not its integer.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some("An instant on the backend's clock, RFC 3339 UTC"))
            .examples([serde_json::json!("2026-11-26T12:00:00.000000Z")])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Timestamp {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip_keeps_microseconds() {
        let t = Timestamp(1_795_000_000_123_456);
        let s = t.to_rfc3339();
        assert!(s.ends_with('Z'), "{s}");
        assert_eq!(Timestamp::parse_rfc3339(&s).unwrap(), t);
    }

    #[test]
    fn add_and_since_saturate() {
        let t = Timestamp(10);
        assert_eq!(t.add(Duration::from_micros(5)), Timestamp(15));
        assert_eq!(Timestamp(5).since(t), Duration::ZERO);
        assert_eq!(
            Timestamp(u64::MAX - 1).add(Duration::from_secs(10)),
            Timestamp(u64::MAX)
        );
    }
}
