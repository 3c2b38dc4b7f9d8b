//! Validation against an OpenAPI 3.1 document's schemas with the
//! `jsonschema` crate (draft 2020-12, the dialect OpenAPI 3.1 uses, formats
//! such as `email` checked), shared by tests/openapi.rs and
//! tests/contracts.rs.

use serde_json::{Value, json};

/// Resolves a local `$ref`.
#[allow(dead_code)] // tests/openapi.rs does not need it
pub(crate) fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> Result<&'a Value, String> {
    match schema.get("$ref").and_then(Value::as_str) {
        None => Ok(schema),
        Some(reference) => {
            let pointer = reference
                .strip_prefix('#')
                .ok_or_else(|| format!("non-local $ref {reference}"))?;
            doc.pointer(pointer)
                .ok_or_else(|| format!("dangling $ref {reference}"))
        }
    }
}

/// Checks `value` against `schema`, a schema of `doc` (its `$ref`s point
/// into `doc`); the error names what failed where, `at` first.
pub(crate) fn validate(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    // The document is the schema resource, so `#/components/...` resolves;
    // its other members are not keywords and are ignored.
    let mut root = doc.clone();
    let object = root
        .as_object_mut()
        .ok_or("the document is not an object")?;
    object.insert("allOf".into(), json!([schema]));
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&root)
        .map_err(|e| format!("{at}: the schema does not compile: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{at}{}: {e}", e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}
