//! A small JSON-schema check for the OpenAPI documents' schemas, shared by
//! tests/openapi.rs and tests/contracts.rs: `$ref`, `type` (including
//! `null`), `enum`, `required`, `properties`, `items`, `oneOf`/`anyOf`,
//! `allOf`, `additionalProperties: false`, `minimum`/`maximum`, `minItems`. Enough for what utoipa generates here; anything else is ignored.

use serde_json::Value;

/// Resolves a local `$ref`.
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

fn type_matches(ty: &str, value: &Value) -> bool {
    match ty {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    }
}

/// Checks `value` against `schema`; the error names the JSON path.
pub(crate) fn validate(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema)?;
    if let Some(alternatives) = schema
        .get("oneOf")
        .or_else(|| schema.get("anyOf"))
        .and_then(Value::as_array)
    {
        let errors: Vec<String> = alternatives
            .iter()
            .filter_map(|alt| validate(doc, alt, value, at).err())
            .collect();
        if errors.len() == alternatives.len() {
            return Err(format!(
                "{at}: matches no alternative: {}",
                errors.join("; ")
            ));
        }
    }
    for part in schema
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        validate(doc, part, value, at)?;
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !types.is_empty() && !types.iter().any(|t| type_matches(t, value)) {
        return Err(format!("{at}: expected {types:?}, got {value}"));
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let Value::Object(fields) = value {
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = required.as_str().unwrap_or_default();
            if !fields.contains_key(name) {
                return Err(format!("{at}: required field {name:?} missing"));
            }
        }
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            for (name, field) in fields {
                if let Some(property) = properties.get(name) {
                    validate(doc, property, field, &format!("{at}.{name}"))?;
                } else if schema.get("additionalProperties") == Some(&Value::Bool(false)) {
                    return Err(format!("{at}: unknown field {name:?}"));
                }
            }
        }
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            return Err(format!("{at}: {n} is below the minimum {min}"));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            return Err(format!("{at}: {n} is above the maximum {max}"));
        }
    }
    if let (Value::Array(items), Some(min)) =
        (value, schema.get("minItems").and_then(Value::as_u64))
        && (items.len() as u64) < min
    {
        return Err(format!("{at}: fewer than {min} items"));
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            validate(doc, item_schema, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_schema_check_refuses_what_does_not_match() {
        let doc = json!({ "components": { "schemas": {
            "Row": { "type": "object", "required": ["id", "n"], "properties": {
                "id": { "type": "string" },
                "n": { "type": "integer" },
                "reason": { "type": ["string", "null"] },
                "state": { "$ref": "#/components/schemas/State" },
                "tags": { "type": "array", "items": { "type": "string" } },
                "q": { "type": "integer", "minimum": 1, "maximum": 100 },
                "lines": { "type": "array", "minItems": 1 }
            }, "additionalProperties": false },
            "State": { "type": "string", "enum": ["A", "B"] }
        }}});
        let schema = json!({ "$ref": "#/components/schemas/Row" });
        let ok = json!({ "id": "x", "n": 1, "reason": null, "state": "A", "tags": ["t"] });
        assert_eq!(validate(&doc, &schema, &ok, "$"), Ok(()));
        for (bad, expected) in [
            (json!({ "n": 1 }), "required field \"id\""),
            (
                json!({ "id": "x", "n": "1" }),
                "$.n: expected [\"integer\"]",
            ),
            (json!({ "id": "x", "n": 1.5 }), "$.n: expected"),
            (json!({ "id": "x", "n": 1, "reason": 3 }), "$.reason"),
            (json!({ "id": "x", "n": 1, "state": "C" }), "not one of"),
            (json!({ "id": "x", "n": 1, "tags": ["t", 2] }), "$.tags[1]"),
            (json!([1]), "expected [\"object\"]"),
            (
                json!({ "id": "x", "n": 1, "extra": 1 }),
                "unknown field \"extra\"",
            ),
            (json!({ "id": "x", "n": 1, "q": 0 }), "below the minimum"),
            (json!({ "id": "x", "n": 1, "q": 101 }), "above the maximum"),
            (json!({ "id": "x", "n": 1, "lines": [] }), "fewer than 1"),
        ] {
            let err = validate(&doc, &schema, &bad, "$").unwrap_err();
            assert!(err.contains(expected), "{bad}: {err}");
        }
        let dangling = json!({ "$ref": "#/components/schemas/Missing" });
        assert!(
            validate(&doc, &dangling, &ok, "$")
                .unwrap_err()
                .contains("dangling")
        );
    }
}
