//! Upgrade outcomes reported by apps (S4-3): how an upgrade or downgrade
//! went, successes as well as failures; each device's latest failure, shown
//! at its next check until a success clears it (S4-5); retention.
//!
//! The gateway ingests reports through [`ReportStore`] and counts which
//! version devices run with [`Census`] (its narrow write path: `reports`,
//! `device_failures` and `devices`); the registry runs
//! retention and folds failures into alerts (ferry-alerts). The tables are
//! created by ferry-store's migrations, like every table.

mod census;
mod model;
mod store;

pub use census::Census;

pub use model::{
    FieldError, LastFailure, MAX_DEVICE_CHARS, MAX_DURATION_MS, MAX_ID_CHARS, MAX_MESSAGE_CHARS, Outcome, Report,
    ReportInput,
};
pub use store::{ReportStore, delete_older_than};
