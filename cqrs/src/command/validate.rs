//! Field-level validation of commands.

use serde::{Deserialize, Serialize};

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// The field's path (`"quantity"`, `"lines[2].sku"`).
    pub field: String,
    /// A stable, machine-readable code (`"required"`, `"too_large"`).
    pub code: String,
    /// A human-readable message.
    pub message: String,
}

/// Every invalid field of a command: what a handler turns into a 422 body
/// (it serializes as a JSON array of [`FieldError`]).
///
/// # Examples
///
/// ```
/// use trellis_cqrs::ValidationErrors;
/// let mut errors = ValidationErrors::new();
/// errors.add("quantity", "too_small", "must be at least 1");
/// assert_eq!(errors.fields().next(), Some("quantity"));
/// assert!(errors.into_result().is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ValidationErrors {
    errors: Vec<FieldError>,
}

impl ValidationErrors {
    /// No errors yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an invalid field.
    pub fn add(
        &mut self,
        field: impl Into<String>,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> &mut Self {
        self.errors.push(FieldError {
            field: field.into(),
            code: code.into(),
            message: message.into(),
        });
        self
    }

    /// Whether no field is invalid.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// The errors, in the order they were added.
    pub fn errors(&self) -> &[FieldError] {
        &self.errors
    }

    /// The invalid fields' names.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.errors.iter().map(|e| e.field.as_str())
    }

    /// `Ok(())` when empty, else `Err(self)`.
    ///
    /// # Errors
    ///
    /// `self`, when any field is invalid.
    pub fn into_result(self) -> Result<(), ValidationErrors> {
        if self.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl std::fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {} ({})", e.field, e.message, e.code)?;
        }
        Ok(())
    }
}

/// A command that checks its own fields before it reaches the aggregate.
///
/// Validation is about shape (required, ranges, formats); business rules that
/// need state belong in [`Aggregate::handle`](trellis_eventsourcing::Aggregate::handle).
pub trait Validate {
    /// Every invalid field, or `Ok(())`.
    fn validate(&self) -> Result<(), ValidationErrors>;
}
