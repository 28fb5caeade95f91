//! Upgrade outcomes reported by apps (S4-3): how an upgrade or downgrade
//! went, successes as well as failures; each device's latest failure, shown
//! at its next check until a success clears it (S4-5); retention.
//!
//! The gateway ingests reports through [`ReportStore`] (its one narrow
//! write path: `reports` and `device_failures`); the registry runs
//! retention and folds failures into alerts (ferry-alerts). The tables are
//! created by ferry-store's migrations, like every table.

mod model;
mod store;

pub use model::{
    FieldError, LastFailure, MAX_DEVICE_CHARS, MAX_DURATION_MS, MAX_ID_CHARS, MAX_MESSAGE_CHARS, Outcome, Report,
    ReportInput,
};
pub use store::{ReportStore, delete_older_than};
