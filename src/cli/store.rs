//! `jwt-issuer store ...`: the PostgreSQL store's own operations (moving a keys dir in and
//! out, re-sealing under a new KEK, status).

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use jwt_issuer::Config;
use jwt_issuer::storage::Stores;

use super::{Context, Note};

#[derive(Debug, Subcommand)]
pub(super) enum StoreCommand {
    /// Copy a keys dir (keys with their states and times, clients) into the PostgreSQL
    /// store, which must be empty; kids stay, so tokens issued before keep verifying.
    /// Revoked tokens are not copied (a warning says how many)
    Import {
        /// The keys dir to copy from
        #[arg(long, value_name = "DIR")]
        from_keys_dir: PathBuf,
    },
    /// Copy the PostgreSQL store (keys with their states and times, clients) into a keys
    /// dir, which must hold no key. Revoked tokens are not copied (a warning says how many)
    Export {
        /// The keys dir to copy into (created 0700; keys 0600)
        #[arg(long, value_name = "DIR")]
        to_keys_dir: PathBuf,
    },
    /// Re-seal every private key under the KEK in JWT_ISSUER_KEK_FILE; the old KEK must be
    /// in JWT_ISSUER_KEK_PREVIOUS_FILE until this has run
    Rewrap,
    /// Show the schema version, the keys by state and by KEK, the number of clients and of
    /// revoked tokens not expired yet
    Status,
}

pub(super) fn run(context: &Context, command: StoreCommand) -> Result<()> {
    if context.config.store.is_none() {
        bail!(
            "no PostgreSQL store is set: set JWT_ISSUER_STORE (or DATABASE_URL) to postgres://USER@HOST:PORT/DB"
        );
    }
    let database = context.stores()?;
    match command {
        StoreCommand::Import { from_keys_dir } => {
            let source = keys_dir(context, from_keys_dir);
            copy(&source, &database)
        }
        StoreCommand::Export { to_keys_dir } => {
            let target = keys_dir(context, to_keys_dir);
            copy(&database, &target)
        }
        StoreCommand::Rewrap => {
            let db = database.database().context("the store is not a database")?;
            let (rewrapped, already) = db.rewrap().context("cannot re-seal the keys")?;
            println!(
                "re-sealed {rewrapped} keys under {} ({already} were under it already)",
                db.kek().current_id()
            );
            super::note(
                Note::Info,
                "the previous KEK (JWT_ISSUER_KEK_PREVIOUS_FILE) can now be removed from every replica",
            );
            Ok(())
        }
        StoreCommand::Status => {
            let db = database.database().context("the store is not a database")?;
            let status = db.status().context("cannot read the store")?;
            println!("store    {}", db.describe());
            println!("schema   {}", status.schema);
            let list = |pairs: &[(String, i64)]| {
                if pairs.is_empty() {
                    "none".to_owned()
                } else {
                    pairs
                        .iter()
                        .map(|(name, n)| format!("{name} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            };
            println!("keys     {}", list(&status.keys_by_state));
            println!("sealed   {}", list(&status.keys_by_kek));
            println!("clients  {}", status.clients);
            println!("revoked  {}", status.revoked);
            Ok(())
        }
    }
}

/// The keys dir `dir` under the same lifecycle timing.
fn keys_dir(context: &Context, dir: PathBuf) -> Stores {
    Stores::keys_dir(&Config {
        keys_dir: dir,
        ..context.config.clone()
    })
}

fn copy(from: &Stores, to: &Stores) -> Result<()> {
    let source = from.keys.describe();
    if from.keys.manifest()?.keys.is_empty() {
        bail!("no keys in {source}: nothing to copy");
    }
    let keys = from
        .keys
        .copy_into(&to.keys)
        .with_context(|| format!("cannot copy the keys into {}", to.keys.describe()))?;
    let clients = from.clients.copy_into(&to.clients).with_context(|| {
        format!(
            "the keys were copied, the clients not (run the same command again to copy them): cannot copy them into {}",
            to.clients.describe()
        )
    })?;
    println!(
        "copied {keys} keys and {clients} clients from {source} into {}",
        to.keys.describe()
    );
    // The revocation list is not copied (up to MAX_REVOKED ids, each one change on either
    // backend): its tokens are not revoked at the target until they expire, so the
    // operator is told how many there are.
    let revocations = from.revocations();
    match revocations.load() {
        Ok(list) if list.is_empty() => {}
        Ok(list) => super::note(
            Note::Warning,
            &format!(
                "{} revoked tokens not expired yet were not copied: {} does not list them as revoked",
                list.len(),
                to.revocations().describe()
            ),
        ),
        Err(e) => super::note(
            Note::Warning,
            &format!(
                "revoked tokens are not copied, and {} cannot be read to count them: {}",
                revocations.describe(),
                jwt_issuer::report::Report(&e)
            ),
        ),
    }
    Ok(())
}
