//! Partition ownership of the projections: the shared lease protocol of
//! [`flowline_service_kit::leases`], under each projection's name.

pub use flowline_service_kit::leases::{Leases, RENEW_EVERY};
