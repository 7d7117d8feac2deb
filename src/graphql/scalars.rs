//! Custom scalars for the log's 64-bit numbers.
//!
//! GraphQL `Int` is 32-bit signed; positions and versions are `u64`. They travel as
//! decimal strings (`"18446744073709551615"`) so that no client — including JavaScript,
//! whose numbers lose precision past 2^53 — ever rounds one. As input, a non-negative
//! integer literal is accepted too, for convenience in hand-written queries.

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};

fn parse_u64(value: &Value) -> Result<u64, String> {
    match value {
        Value::String(s) => s.parse::<u64>().map_err(|_| {
            format!("expected a decimal string of a non-negative 64-bit integer, got {s:?}")
        }),
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("expected a non-negative integer, got {n}")),
        other => Err(format!("expected a decimal string, got {other}")),
    }
}

/// A position in the global log: gapless, from 1; 0 means "before the first event".
/// Serialized as a decimal string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position(pub u64);

/// A position in the global log as a decimal string (64-bit unsigned): gapless, from 1;
/// "0" means before the first event. Inputs also accept a non-negative integer.
#[Scalar(name = "Position")]
impl ScalarType for Position {
    fn parse(value: Value) -> InputValueResult<Self> {
        parse_u64(&value)
            .map(Position)
            .map_err(InputValueError::custom)
    }

    fn is_valid(value: &Value) -> bool {
        parse_u64(value).is_ok()
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.to_string())
    }
}

impl From<annals_store::Position> for Position {
    fn from(p: annals_store::Position) -> Self {
        Position(p.get())
    }
}

impl From<Position> for annals_store::Position {
    fn from(p: Position) -> Self {
        annals_store::Position(p.0)
    }
}

/// A version of one stream: from 1; 0 means "the stream has no events". Serialized as a
/// decimal string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Version(pub u64);

/// A version of one stream as a decimal string (64-bit unsigned): from 1; "0" means the
/// stream has no events. Inputs also accept a non-negative integer.
#[Scalar(name = "Version")]
impl ScalarType for Version {
    fn parse(value: Value) -> InputValueResult<Self> {
        parse_u64(&value)
            .map(Version)
            .map_err(InputValueError::custom)
    }

    fn is_valid(value: &Value) -> bool {
        parse_u64(value).is_ok()
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_largest_position() {
        let p = Position(u64::MAX);
        assert_eq!(<Position as ScalarType>::parse(p.to_value()).unwrap(), p);
        assert_eq!(p.to_value(), Value::String("18446744073709551615".into()));
    }

    #[test]
    fn refuses_negative_and_garbage() {
        assert!(!<Version as ScalarType>::is_valid(&Value::String(
            "-1".into()
        )));
        assert!(!<Version as ScalarType>::is_valid(&Value::String(
            "x".into()
        )));
        assert!(<Version as ScalarType>::is_valid(&Value::from(3)));
    }
}
