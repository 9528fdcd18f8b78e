//! A consumer as the store keeps it: the credentials the auth plugins
//! check, and the consumer's own rate limit (one bucket per consumer, on
//! every route it uses).

use crate::field_error::{deserialize_at, field};
use crate::plugins::consumer::{Consumer, ConsumerSpec};

use super::error::FieldError;
use super::rate_limit::RateLimitSpec;

/// One consumer, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerEntry {
    pub consumer: Consumer,
    pub limit: Option<RateLimitSpec>,
}

/// Checks the consumer called `name` (fields under `at`).
pub fn compile(spec: &ConsumerSpec, name: &str, at: &str) -> Result<ConsumerEntry, FieldError> {
    let consumer = spec.compile(name, at)?;
    let limit = match &spec.rate_limit {
        None => None,
        Some(v) => {
            let at = field(at, "rate_limit");
            let limit: RateLimitSpec = deserialize_at(v).map_err(|e| e.under(&at))?;
            limit.validate(&at)?;
            if limit.key != "route" {
                return Err(FieldError::new(
                    field(&at, "key"),
                    "a consumer's own limit is one bucket per consumer: leave key out",
                ));
            }
            Some(limit)
        }
    };
    Ok(ConsumerEntry { consumer, limit })
}

/// [`compile`] from etcd's JSON, the name from the key.
pub fn from_json(name: &str, value: &[u8]) -> Result<ConsumerEntry, FieldError> {
    let spec: ConsumerSpec = crate::field_error::from_json(value)?;
    compile(&spec, name, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_limit_is_checked_by_field() {
        let e = from_json("a", br#"{"rate_limit": {"rate": 5}}"#).unwrap();
        assert_eq!(e.limit.unwrap().rate, 5.0);
        assert!(e.consumer.rate_limited);
        for (json, at) in [
            (r#"{"rate_limit": {"rate": 0}}"#, "rate_limit.rate"),
            (
                r#"{"rate_limit": {"rate": 5, "key": "client_ip"}}"#,
                "rate_limit.key",
            ),
            (
                r#"{"rate_limit": {"rate": 5, "nope": 1}}"#,
                "rate_limit.nope",
            ),
            (
                r#"{"basic_auth": {"username": "a", "password": "p"}}"#,
                "basic_auth.password",
            ),
        ] {
            assert_eq!(
                from_json("a", json.as_bytes()).unwrap_err().path,
                at,
                "{json}"
            );
        }
    }
}
