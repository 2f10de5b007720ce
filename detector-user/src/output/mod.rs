//! The output stage: diagnoses as JSON lines, Prometheus metrics (with the endpoints that
//! fail most), the endpoint serving them.

pub mod community_id;
pub mod detail;
pub mod diagnosis;
pub mod escape;
pub mod http;
pub mod metrics;
pub mod top;
