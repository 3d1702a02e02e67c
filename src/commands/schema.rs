//! `deployd schema`: the plan format's JSON Schema, for editors' YAML language servers.

use super::Exit;

/// Prints the schema.
pub fn schema() -> Exit {
    match serde_json::to_string_pretty(&crate::plan::raw::plan_json_schema()) {
        Ok(text) => {
            println!("{text}");
            Exit::Ok
        }
        Err(e) => {
            eprintln!("deployd: cannot render the schema: {e}");
            Exit::Failed
        }
    }
}
