//! The integration tests, linked into one binary: one module per feature, sharing
//! `helpers` (a real server on 127.0.0.1:0 over a temporary keys dir, the real binary,
//! plain HTTP) and `pg` (real PostgreSQL: a database per test, or a private cluster).

mod external;
mod helpers;
mod pg;
mod pg_tls;

mod cli;
mod clients;
mod config;
mod deploy;
mod dpop;
mod dpop_resource;
mod extractor;
mod fail_closed;
mod faults;
mod federation;
mod fuzz;
mod hostile;
mod hs256;
mod hsm;
mod interop;
mod interop_clients;
mod introspection;
mod introspection_client;
mod jwks;
mod jwks_cache;
mod keystore;
mod logs;
mod metrics;
mod operator_cli;
mod pg_faults;
mod pg_replay;
mod pg_replicas;
mod pg_revocation;
mod pg_store;
mod private_key_jwt;
mod readme;
mod rotation;
mod secrets;
mod tls;
mod token;
mod token_endpoint;
mod verify;
mod wycheproof;
