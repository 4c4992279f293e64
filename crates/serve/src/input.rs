//! Request inputs, shared by both APIs: [`parse_inputs`] reads a JSON `input`/`inputs` value (a string,
//! a list of token ids, or a list of strings and token-id lists) into [`Input`]s, refusing every other
//! shape with a message naming what is allowed; [`prepare`] checks them against the [`Limits`] and
//! turns them into the engine's encodings.
//!
//! Promises: nothing reaches the engine that the model cannot take. Every input is non-empty, every
//! token id is inside the vocabulary, every encoding is at most `max_input_tokens` long (over-long inputs
//! are refused, naming the input and the limit, unless truncation is on, and then counted in
//! [`Prepared::truncated`]). Token ids are taken as the complete sequence (no `[CLS]`/`[SEP]` added):
//! what a client gets from `/tokenize` it can send back as it is.

use braid_model::{Encoding, Tokenizer, TruncationSide};
use serde_json::Value;

use crate::config::Limits;
use crate::errors::{ApiError, Kind};

/// One input of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Text, tokenized by the server.
    Text(String),
    /// Token ids, the complete sequence.
    Ids(Vec<u32>),
}

impl Input {
    /// Bytes of text (token ids count 4 each): how much tokenizing it costs.
    pub fn weight(&self) -> usize {
        match self {
            Self::Text(text) => text.len(),
            Self::Ids(ids) => ids.len() * 4,
        }
    }
}

/// What the allowed shapes are, for error messages.
const SHAPES: &str = "a string, a list of token ids, or a list of strings or of token-id lists";

/// Reads the JSON value of request field `param` into inputs (see the module doc for the shapes).
pub fn parse_inputs(value: Value, param: &'static str) -> Result<Vec<Input>, ApiError> {
    let invalid = |what: String| {
        ApiError::new(
            Kind::InvalidField,
            format!("`{param}` must be {SHAPES}; {what}"),
        )
        .on(param)
    };
    match value {
        Value::String(text) => Ok(vec![text_input(text, param, None)?]),
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_number) => {
            Ok(vec![Input::Ids(token_ids(&items, param, None)?)])
        }
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(index, item)| match item {
                Value::String(text) => text_input(text, param, Some(index)),
                Value::Array(ids) => token_ids(&ids, param, Some(index)).map(Input::Ids),
                other => Err(invalid(format!("item {index} is {}", type_name(&other)))),
            })
            .collect(),
        Value::Null => Err(ApiError::new(
            Kind::InvalidField,
            format!("`{param}` is missing: give {SHAPES}"),
        )
        .on(param)),
        other => Err(invalid(format!("got {}", type_name(&other)))),
    }
}

fn text_input(text: String, param: &'static str, index: Option<usize>) -> Result<Input, ApiError> {
    if text.is_empty() {
        return Err(ApiError::new(
            Kind::EmptyInput,
            format!("{} is an empty string: give some text", name(param, index)),
        )
        .on(param));
    }
    Ok(Input::Text(text))
}

fn token_ids(
    items: &[Value],
    param: &'static str,
    index: Option<usize>,
) -> Result<Vec<u32>, ApiError> {
    if items.is_empty() {
        return Err(ApiError::new(
            Kind::EmptyInput,
            format!("{} is an empty list of token ids", name(param, index)),
        )
        .on(param));
    }
    items
        .iter()
        .enumerate()
        .map(|(position, item)| {
            item.as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| {
                    ApiError::new(
                        Kind::InvalidField,
                        format!(
                            "{}, position {position}: {item} is not a token id (a whole number \
                             from 0 to 4294967295)",
                            name(param, index)
                        ),
                    )
                    .on(param)
                })
        })
        .collect()
}

/// `input` or `input[3]`.
fn name(param: &str, index: Option<usize>) -> String {
    match index {
        Some(index) => format!("`{param}[{index}]`"),
        None => format!("`{param}`"),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A request's inputs, ready for the engine.
#[derive(Debug)]
pub struct Prepared {
    /// One encoding per input, in order.
    pub encodings: Vec<Encoding>,
    /// Their tokens in all (OpenAI's `usage.prompt_tokens`).
    pub tokens: usize,
    /// How many were truncated.
    pub truncated: usize,
}

/// Checks `inputs` against `limits` and encodes them: texts with `tokenizer`, token ids as they are.
/// `truncate` (the request's choice, else the server's `--auto-truncate`) decides what an over-long
/// input gets: truncated on `side`, or refused.
pub fn prepare(
    inputs: Vec<Input>,
    tokenizer: &Tokenizer,
    limits: &Limits,
    truncate: bool,
    side: TruncationSide,
    param: &'static str,
) -> Result<Prepared, ApiError> {
    limits.check_count(inputs.len(), param)?;
    let max = limits.max_input_tokens;
    let too_long = |index: usize| {
        ApiError::new(
            Kind::InputTooLong,
            format!(
                "`{param}[{index}]` is longer than the limit of {max} tokens (--max-input-tokens); \
                 shorten it, or ask for truncation (TEI: \"truncate\": true; the server: \
                 --auto-truncate)"
            ),
        )
        .on(param)
    };
    let mut prepared = Prepared {
        encodings: Vec::with_capacity(inputs.len()),
        tokens: 0,
        truncated: 0,
    };
    for (index, input) in inputs.into_iter().enumerate() {
        let (encoding, over) = match input {
            Input::Text(text) => {
                let bounded = tokenizer.encode_within(&text, max, side).map_err(|error| {
                    ApiError::new(Kind::InputTooLong, format!("`{param}[{index}]`: {error}"))
                        .on(param)
                })?;
                (bounded.encoding, bounded.over_limit)
            }
            Input::Ids(mut ids) => {
                if let Some((position, id)) = ids
                    .iter()
                    .enumerate()
                    .find(|(_, &id)| id as usize >= limits.vocab_size)
                {
                    return Err(ApiError::new(
                        Kind::InvalidTokenId,
                        format!(
                            "`{param}[{index}]`, position {position}: token id {id} is not in the \
                             model's vocabulary (ids 0 to {})",
                            limits.vocab_size - 1
                        ),
                    )
                    .on(param));
                }
                let over = ids.len() > max;
                if over {
                    match side {
                        TruncationSide::Right => ids.truncate(max),
                        TruncationSide::Left => {
                            ids.drain(..ids.len() - max);
                        }
                    }
                }
                let type_ids = vec![0; ids.len()];
                (Encoding { ids, type_ids }, over)
            }
        };
        if over {
            if !truncate {
                return Err(too_long(index));
            }
            prepared.truncated += 1;
        }
        prepared.tokens += encoding.len();
        prepared.encodings.push(encoding);
    }
    Ok(prepared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_allowed_shape_parses() {
        assert_eq!(
            parse_inputs(json!("a"), "input").unwrap(),
            [Input::Text("a".into())]
        );
        assert_eq!(
            parse_inputs(json!([101, 102]), "input").unwrap(),
            [Input::Ids(vec![101, 102])]
        );
        assert_eq!(
            parse_inputs(json!(["a", [5, 6]]), "input").unwrap(),
            [Input::Text("a".into()), Input::Ids(vec![5, 6])]
        );
    }

    #[test]
    fn other_shapes_are_refused_naming_what_is_allowed() {
        for (value, kind) in [
            (json!(3), Kind::InvalidField),
            (json!({"a": 1}), Kind::InvalidField),
            (json!(null), Kind::InvalidField),
            (json!(["a", 3.5]), Kind::InvalidField),
            (json!([[1, -2]]), Kind::InvalidField),
            (json!([[1, 4294967296u64]]), Kind::InvalidField),
            (json!(""), Kind::EmptyInput),
            (json!(["a", ""]), Kind::EmptyInput),
            (json!([[]]), Kind::EmptyInput),
        ] {
            let error = parse_inputs(value.clone(), "input").unwrap_err();
            assert_eq!(error.kind, kind, "{value}: {error}");
            assert_eq!(error.param, Some("input"));
        }
        let message = parse_inputs(json!(true), "inputs").unwrap_err().message;
        assert!(
            message.contains(SHAPES) && message.contains("a boolean"),
            "{message}"
        );
    }
}
