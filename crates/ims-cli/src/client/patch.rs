//! Building request bodies: `KEY=VALUE` properties, the create body and the JSON-patch for updates.

use serde_json::{Map, Value, json};

/// Image attributes a command wants to set; `None` leaves the attribute alone.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ImageFields {
    pub name: Option<String>,
    pub disk_format: Option<String>,
    pub container_format: Option<String>,
    pub visibility: Option<String>,
    pub protected: Option<bool>,
    pub min_disk: Option<u64>,
    pub min_ram: Option<u64>,
    /// Custom properties, in command-line order.
    pub properties: Vec<(String, String)>,
}

/// Parses `--property KEY=VALUE`; the value may itself contain `=` and may be empty.
pub fn parse_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        Some(_) => Err(format!("property '{text}' has an empty key")),
        None => Err(format!("property '{text}' must look like KEY=VALUE")),
    }
}

/// A JSON pointer (RFC 6901) naming a top-level image attribute.
pub fn json_pointer(key: &str) -> String {
    format!("/{}", key.replace('~', "~0").replace('/', "~1"))
}

/// The `POST /v2/images` body. Core attributes are written after custom properties so an
/// explicit flag wins over a `--property` of the same name.
pub fn build_create_body(fields: &ImageFields, tags: &[String]) -> Value {
    let mut body = Map::new();
    for (key, value) in &fields.properties {
        body.insert(key.clone(), Value::String(value.clone()));
    }
    for (key, value) in core_values(fields) {
        body.insert(key.to_owned(), value);
    }
    if !tags.is_empty() {
        body.insert("tags".to_owned(), json!(tags));
    }
    Value::Object(body)
}

/// The `application/openstack-images-v2.1-json-patch` document for an update: `replace` for
/// core attributes (they always exist), `add` for custom properties (v2.1 `add` overwrites),
/// `remove` for removed properties.
pub fn build_update_patch(fields: &ImageFields, remove_properties: &[String]) -> Vec<Value> {
    let mut ops = Vec::new();
    for (key, value) in core_values(fields) {
        ops.push(json!({"op": "replace", "path": json_pointer(key), "value": value}));
    }
    for (key, value) in &fields.properties {
        ops.push(json!({"op": "add", "path": json_pointer(key), "value": value}));
    }
    for key in remove_properties {
        ops.push(json!({"op": "remove", "path": json_pointer(key)}));
    }
    ops
}

fn core_values(fields: &ImageFields) -> Vec<(&'static str, Value)> {
    let mut values = Vec::new();
    if let Some(name) = &fields.name {
        values.push(("name", json!(name)));
    }
    if let Some(disk_format) = &fields.disk_format {
        values.push(("disk_format", json!(disk_format)));
    }
    if let Some(container_format) = &fields.container_format {
        values.push(("container_format", json!(container_format)));
    }
    if let Some(visibility) = &fields.visibility {
        values.push(("visibility", json!(visibility)));
    }
    if let Some(protected) = fields.protected {
        values.push(("protected", json!(protected)));
    }
    if let Some(min_disk) = fields.min_disk {
        values.push(("min_disk", json!(min_disk)));
    }
    if let Some(min_ram) = fields.min_ram {
        values.push(("min_ram", json!(min_ram)));
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn property_splits_at_the_first_equals_sign() {
        assert_eq!(
            parse_property("k=v=w"),
            Ok(("k".to_owned(), "v=w".to_owned()))
        );
        assert_eq!(parse_property("k="), Ok(("k".to_owned(), String::new())));
        assert!(parse_property("k").is_err());
        assert!(parse_property("=v").is_err());
    }

    #[test]
    fn pointer_escapes_tilde_before_slash() {
        assert_eq!(json_pointer("a/b~c"), "/a~1b~0c");
        assert_eq!(json_pointer("hw_disk_bus"), "/hw_disk_bus");
    }

    #[test]
    fn create_body_holds_core_fields_properties_and_tags() {
        let fields = ImageFields {
            name: Some("cirros".into()),
            disk_format: Some("qcow2".into()),
            container_format: Some("bare".into()),
            visibility: Some("private".into()),
            protected: Some(true),
            min_disk: Some(1),
            min_ram: Some(64),
            properties: vec![
                ("os_distro".into(), "cirros".into()),
                ("name".into(), "x".into()),
            ],
        };
        let body = build_create_body(&fields, &["a".to_owned()]);
        assert_eq!(
            body,
            json!({"os_distro": "cirros", "name": "cirros", "disk_format": "qcow2",
                   "container_format": "bare", "visibility": "private", "protected": true,
                   "min_disk": 1, "min_ram": 64, "tags": ["a"]})
        );
    }

    #[test]
    fn create_body_omits_unset_fields() {
        let body = build_create_body(&ImageFields::default(), &[]);
        assert_eq!(body, json!({}));
    }

    #[test]
    fn update_patch_uses_replace_add_and_remove() {
        let fields = ImageFields {
            name: Some("new".into()),
            protected: Some(false),
            min_ram: Some(512),
            properties: vec![("a/b".into(), "1".into())],
            ..ImageFields::default()
        };
        let ops = build_update_patch(&fields, &["old".to_owned()]);
        assert_eq!(
            ops,
            vec![
                json!({"op": "replace", "path": "/name", "value": "new"}),
                json!({"op": "replace", "path": "/protected", "value": false}),
                json!({"op": "replace", "path": "/min_ram", "value": 512}),
                json!({"op": "add", "path": "/a~1b", "value": "1"}),
                json!({"op": "remove", "path": "/old"}),
            ]
        );
    }

    #[test]
    fn empty_update_has_no_operations() {
        assert!(build_update_patch(&ImageFields::default(), &[]).is_empty());
    }
}
