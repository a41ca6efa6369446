//! `jwt-issuer config check`.

use anyhow::Result;
use clap::Subcommand;
use jwt_issuer::config::layers::SETTINGS;
use jwt_issuer::secret::HmacSecret;

use super::{Context, HMAC_SECRET_ENV, human};

#[derive(Debug, Subcommand)]
pub(super) enum ConfigCommand {
    /// Check the settings `serve` would run with, and print each one with where it came
    /// from (default, file, env, flag); secrets are never printed
    Check,
}

pub(super) fn run(context: &Context, command: ConfigCommand) -> Result<()> {
    match command {
        ConfigCommand::Check => check(context),
    }
}

fn check(context: &Context) -> Result<()> {
    let config = &context.config;
    let value = |setting: &str| -> String {
        let secs = |d: std::time::Duration| human(d);
        match setting {
            "keys_dir" => config.keys_dir.display().to_string(),
            "store" => config
                .store
                .as_ref()
                .map_or_else(|| "none (the keys dir)".into(), |url| url.redacted()),
            "store_stale_after" => secs(config.store_stale_after),
            "store_ca_file" => config.store_ca_file.as_ref().map_or_else(
                || "none (the system's roots)".into(),
                |p| p.display().to_string(),
            ),
            "jwks_max_age" => secs(config.policy.jwks_max_age),
            "max_token_ttl" => secs(config.policy.max_token_ttl),
            "rotation_leeway" => secs(config.policy.leeway),
            "bind" => config.bind.clone(),
            "issuer" => config.issuer_for(None).map_or_else(
                |e| format!("(none: {e})"),
                |i| {
                    let shown = i.as_str().to_owned();
                    if config.issuer.is_none() {
                        format!("{shown} (from bind)")
                    } else {
                        shown
                    }
                },
            ),
            "alg" => config.alg.to_string(),
            "workers" => config.workers.to_string(),
            "token_ttl" => secs(config.token_ttl),
            "auth_max_failures" => config.auth_limits.max_failures.to_string(),
            "auth_failure_window" => secs(config.auth_limits.window),
            "rotate_every" => config.rotate_every.map_or_else(|| "off".into(), secs),
            "trusted_proxies" => {
                let list: Vec<String> = config
                    .trusted_proxies
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                if list.is_empty() {
                    "none".into()
                } else {
                    list.join(",")
                }
            }
            "request_timeout" => secs(config.http.request_timeout),
            "max_connections" => config.http.max_connections.to_string(),
            "max_connections_per_address" => config.http.max_connections_per_address.to_string(),
            "shutdown_drain" => secs(config.http.shutdown_drain),
            "keep_alive" => secs(config.http.keep_alive),
            "max_body_bytes" => config.http.max_body_bytes.to_string(),
            "tls_cert" => config.tls.as_ref().map_or_else(
                || "none (plain HTTP)".into(),
                |t| t.cert.display().to_string(),
            ),
            "tls_key" => config
                .tls
                .as_ref()
                .map_or_else(|| "none".into(), |t| t.key.display().to_string()),
            "log_format" => config.log_format.to_string(),
            "audit_log" => config
                .audit_log
                .as_ref()
                .map_or_else(|| "none".into(), |p| p.display().to_string()),
            "trusted_issuers" => config
                .trusted_issuers
                .as_ref()
                .map_or_else(|| "none".into(), |p| p.display().to_string()),
            "pkcs11_module" => config.pkcs11.as_ref().map_or_else(
                || "none (the store holds the keys)".into(),
                |p| p.module.display().to_string(),
            ),
            "pkcs11_token" => config
                .pkcs11
                .as_ref()
                .map_or_else(|| "none".into(), |p| p.token.clone()),
            _ => "?".into(),
        }
    };
    let width = SETTINGS.iter().map(|s| s.len()).max().unwrap_or(0);
    for setting in SETTINGS {
        outln!(
            "{setting:<width$} = {}    ({})",
            value(setting),
            context.layers.source(setting)
        );
    }
    // Secrets: only whether they are set and where from, never the value.
    for var in [HMAC_SECRET_ENV, "JWT_SECRET_PREVIOUS"] {
        let shown = match HmacSecret::from_env(var) {
            Ok(Some(_)) => format!("set, redacted    (env {var} or {var}_FILE)"),
            Ok(None) => "not set".to_owned(),
            Err(e) => format!("unusable: {e}"),
        };
        outln!("{:<width$} = {shown}", var.to_ascii_lowercase());
    }
    if config.pkcs11.is_some() {
        // Read (and its file's mode checked) before this point; never shown.
        let shown = if config.pkcs11_pin.is_some() {
            "set, redacted    (env JWT_ISSUER_PKCS11_PIN or JWT_ISSUER_PKCS11_PIN_FILE)"
        } else {
            "not set"
        };
        outln!("{:<width$} = {shown}", "pkcs11_pin");
    }
    super::serve::server_config(context)?;
    if let Some(path) = &context.config.trusted_issuers {
        let federation = jwt_issuer::oauth::federation::Federation::load(path)
            .map_err(|e| anyhow::anyhow!("trusted issuers: {e}"))?;
        outln!(
            "{:<width$} = {}",
            "trusted issuers",
            federation.issuers().join(" ")
        );
    }
    outln!("ok: serve would start with these settings");
    Ok(())
}
