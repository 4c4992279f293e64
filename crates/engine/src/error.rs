//! [`EngineError`]: every way an engine call can fail, worded for the person who has to act on it.

use std::sync::Arc;

use braid_model::ModelError;
use braid_runtime::RuntimeError;

/// An engine error. Errors of a batch are shared by every request in it (`Arc`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The queue holds as many tokens as it may; the request was not accepted (nothing of it runs).
    #[error(
        "overloaded: {queued} tokens are waiting and this request has {requested} (limit {limit}); \
         retry later, or raise EngineConfig::max_queued_tokens"
    )]
    Overloaded {
        /// Tokens waiting when the request came.
        queued: usize,
        /// The request's tokens.
        requested: usize,
        /// The limit.
        limit: usize,
    },

    /// The engine is shutting down and takes no new requests (those already accepted finish).
    #[error("the engine is shutting down and accepts no new requests")]
    ShutDown,

    /// A knob is out of range.
    #[error("invalid engine {name} value {value:?}: {allowed}")]
    InvalidConfig {
        /// The setting.
        name: &'static str,
        /// What was given.
        value: String,
        /// What is allowed.
        allowed: &'static str,
    },

    /// An engine invariant broke (a bug): the request fails rather than return a wrong result.
    #[error("internal engine error (this is a bug in braid-engine): {detail}")]
    Internal {
        /// What broke.
        detail: String,
    },

    /// Every device of the engine has failed (device errors, or memory that splitting did not
    /// cure): nothing is left to run requests on. Requests waiting fail with it, new ones are refused.
    #[error(
        "every device of the engine has failed ({detail}); it takes no more requests: restart the \
         engine (or the server) once the devices are usable again"
    )]
    NoHealthyDevice {
        /// Each device's name and why it failed.
        detail: String,
    },

    /// The model failed: the request's own input (tokenization, length), or the batch it ran in.
    #[error(transparent)]
    Model(Arc<ModelError>),
}

impl EngineError {
    /// Whether this is the device running out of memory (a batch the engine splits and retries).
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, Self::Model(e) if is_out_of_memory(e))
    }

    /// Whether this is a device failing (a failed stream, a driver error) rather than the request's
    /// input or memory, or every device having failed.
    pub fn is_device_failure(&self) -> bool {
        match self {
            Self::NoHealthyDevice { .. } => true,
            Self::Model(e) => Fault::of(e) == Fault::Device,
            _ => false,
        }
    }

    /// A short, stable name of the kind, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Overloaded { .. } => "overloaded",
            Self::ShutDown => "shut_down",
            Self::InvalidConfig { .. } => "invalid_config",
            Self::Internal { .. } => "internal",
            Self::NoHealthyDevice { .. } => "no_healthy_device",
            Self::Model(e) if is_out_of_memory(e) => "out_of_memory",
            Self::Model(e) if Fault::of(e) == Fault::Device => "device",
            Self::Model(e) => match **e {
                ModelError::NonFiniteEmbedding { .. } => "non_finite",
                ModelError::InputTooLong { .. } => "input_too_long",
                _ => "model",
            },
        }
    }
}

/// What a failed forward says about where the fault lies (`Engine` acts on it: module doc of
/// `executor`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The request's own input (a bad token id, a shape the model refuses, ...): only its request
    /// fails.
    Input,
    /// Out of memory: the batch is split and retried; a single sequence that still does not fit
    /// retires the device when another healthy one can take the work.
    OutOfMemory,
    /// The device itself (a failed stream, a driver error, a runtime that is gone): the device is
    /// retired and its work goes to the others.
    Device,
}

impl Fault {
    /// The fault a model error stands for.
    pub(crate) fn of(error: &ModelError) -> Self {
        match error {
            _ if is_out_of_memory(error) => Self::OutOfMemory,
            ModelError::Runtime(
                RuntimeError::StreamFailed { .. }
                | RuntimeError::Device(_)
                | RuntimeError::Dropped { .. },
            ) => Self::Device,
            _ => Self::Input,
        }
    }
}

/// Whether a model error is the allocator's (or the device's) out of memory.
pub(crate) fn is_out_of_memory(error: &ModelError) -> bool {
    matches!(
        error,
        ModelError::Runtime(
            RuntimeError::OutOfMemory { .. } | RuntimeError::DeviceOutOfMemory { .. }
        )
    )
}

impl From<ModelError> for EngineError {
    fn from(error: ModelError) -> Self {
        Self::Model(Arc::new(error))
    }
}
