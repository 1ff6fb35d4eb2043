//! Prints the CustomResourceDefinitions (`crdgen crds`) or the gateway configuration's JSON
//! schema (`crdgen config-schema`); `make gen` writes them into `crds/yaml/`.

use std::io::Write;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let what = std::env::args().nth(1).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    match what.as_str() {
        "crds" => {
            for crd in mcpgate_crds::v1alpha1::crds() {
                writeln!(out, "---")?;
                out.write_all(serde_yaml::to_string(&crd)?.as_bytes())?;
            }
        }
        "config-schema" => {
            let schema = schemars::schema_for!(mcpgate_crds::GatewayConfig);
            writeln!(out, "{}", serde_json::to_string_pretty(&schema)?)?;
        }
        _ => return Err("usage: crdgen crds|config-schema".into()),
    }
    Ok(())
}
