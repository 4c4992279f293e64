//! [`ServeConfig`]: the server's limits, timeouts and key, as plain values (the command line turns
//! its flags into one), and [`Limits`]: the per-request limits once the model is known.

use std::time::Duration;

use braid_model::load::Embedder;

use crate::errors::{ApiError, Kind};

/// How the server behaves. [`ServeConfig::default`] gives text-embeddings-inference's defaults where it
/// has one.
#[derive(Clone, Debug, PartialEq)]
pub struct ServeConfig {
    /// The model name reported in responses and `/info` (the model directory's name).
    pub model_name: String,
    /// A Bearer key every route except `/health` and `/metrics` requires; none: no key needed.
    pub api_key: Option<String>,
    /// The most inputs in one request (TEI's `--max-client-batch-size`, default 32).
    pub max_client_batch_size: usize,
    /// The most tokens of one input, special tokens included (default and ceiling: the model's
    /// `max_seq_length`).
    pub max_input_tokens: Option<usize>,
    /// Truncate over-long inputs instead of refusing them (TEI's `--auto-truncate`; a TEI request's
    /// `truncate` overrides it).
    pub auto_truncate: bool,
    /// The most requests in flight; more are refused with 429 at once, never queued (default 512).
    pub max_concurrent_requests: usize,
    /// The largest request body in bytes (default 2,000,000, as TEI's).
    pub payload_limit: usize,
    /// How long a client may take to send a request's headers before its connection is closed.
    pub header_timeout: Duration,
    /// How long a request may take, body upload and embedding included, before a 408.
    pub request_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            model_name: "all-MiniLM-L6-v2".into(),
            api_key: None,
            max_client_batch_size: 32,
            max_input_tokens: None,
            auto_truncate: false,
            max_concurrent_requests: 512,
            payload_limit: 2_000_000,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl ServeConfig {
    /// Checks the values that need no model, naming the flag that is out of range.
    pub fn validate(&self) -> Result<(), String> {
        let check = |ok: bool, message: String| if ok { Ok(()) } else { Err(message) };
        check(
            (1..=4096).contains(&self.max_client_batch_size),
            format!(
                "--max-client-batch-size {}: between 1 and 4096 inputs per request",
                self.max_client_batch_size
            ),
        )?;
        check(
            (1..=65_536).contains(&self.max_concurrent_requests),
            format!(
                "--max-concurrent-requests {}: between 1 and 65536",
                self.max_concurrent_requests
            ),
        )?;
        check(
            (1024..=1 << 30).contains(&self.payload_limit),
            format!(
                "--payload-limit {}: between 1024 bytes and 1 GiB",
                self.payload_limit
            ),
        )?;
        check(
            self.api_key.as_ref().is_none_or(|key| !key.is_empty()),
            "--api-key is empty: give a key, or leave the flag out to need none".into(),
        )?;
        for (name, value) in [
            ("--header-timeout", self.header_timeout),
            ("--request-timeout", self.request_timeout),
        ] {
            check(
                value >= Duration::from_millis(1) && value <= Duration::from_secs(3600),
                format!("{name} {value:?}: between 1 ms and 1 hour"),
            )?;
        }
        Ok(())
    }

    /// The per-request limits for `model`, or an error when `--max-input-tokens` exceeds what the model
    /// takes.
    pub fn limits(&self, model: &dyn Embedder) -> Result<Limits, String> {
        let model_max = model.max_seq_length();
        let max_input_tokens = self.max_input_tokens.unwrap_or(model_max);
        if !(2..=model_max).contains(&max_input_tokens) {
            return Err(format!(
                "--max-input-tokens {max_input_tokens}: between 2 and the model's max_seq_length \
                 {model_max}"
            ));
        }
        Ok(Limits {
            max_client_batch_size: self.max_client_batch_size,
            max_input_tokens,
            auto_truncate: self.auto_truncate,
            vocab_size: model.spec().config.vocab_size,
        })
    }
}

/// The limits one request is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most inputs per request.
    pub max_client_batch_size: usize,
    /// The most tokens per input.
    pub max_input_tokens: usize,
    /// Whether over-long inputs are truncated when the request does not say.
    pub auto_truncate: bool,
    /// Token ids must be below this.
    pub vocab_size: usize,
}

impl Limits {
    /// Refuses a request of `count` inputs: none, or more than the limit.
    pub fn check_count(&self, count: usize, param: &'static str) -> Result<(), ApiError> {
        if count == 0 {
            return Err(ApiError::new(
                Kind::EmptyInput,
                format!("`{param}` is an empty list: give at least one input"),
            )
            .on(param));
        }
        if count > self.max_client_batch_size {
            return Err(ApiError::new(
                Kind::TooManyInputs,
                format!(
                    "{count} inputs in one request; at most {} are allowed \
                     (--max-client-batch-size): split the request",
                    self.max_client_batch_size
                ),
            )
            .on(param));
        }
        Ok(())
    }
}
